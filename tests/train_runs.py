"""Running `train.py` from the tests: a tiny model on a small corpus, in a subprocess on CPU."""

import os
import subprocess
import sys
import time

from roberta_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The model and run of every train.py test; the corpus is conftest's `corpus`.
TINY_OVERRIDES = [
    "--config.model.hidden_size=32", "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=4",
    "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=34",
    "--config.tokenizer.vocab_size=300", "--config.data.max_seq_length=32", "--config.batch_size=8",
    "--config.eval_every_steps=1000", "--config.log_every_steps=1", "--config.progress=False",
    "--config.export_hf=False",
]


def run_train(workdir, corpus, *overrides, devices=1, background=False, succeeds=True, wrapper=(), env=None,
              config="configs/tiny.py"):
    """train.py of `config` on `corpus` with the tiny overrides and `overrides`: its Popen with `background`, else
    its completed process, asserted to exit 0 (`succeeds`) or not. `wrapper`: a script that runs train.py
    (its path first in its arguments); `env`: more environment variables; `config`: the file in configs/ (with
    its `:arg`)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO, **(env or {}))
    cmd = [sys.executable, *wrapper, os.path.join(REPO, "train.py"), f"--config={REPO}/{config}",
           f"--workdir={workdir}", f"--config.data.train_files={corpus}", *TINY_OVERRIDES, *overrides]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert (out.returncode == 0) == succeeds, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def losses(workdir):
    return {step: m["train/loss"] for step, m in metrics.read_metrics(str(workdir)).items() if "train/loss" in m}


def logged_losses(workdir):
    """`losses(workdir)`, {} before anything is logged (a workdir local or on gs://)."""
    try:
        return losses(workdir)
    except FileNotFoundError:
        return {}


def wait_for_step(workdir, proc, step, timeout=300):
    """Waits until `workdir`'s metrics hold `step` (on gs:// they appear at each flush: at every checkpoint)."""
    start = time.time()
    while time.time() - start < timeout:
        if max(logged_losses(workdir), default=0) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
