"""train.py end to end on CPU: loss falls, mesh shapes agree, kills resume exactly, multi-host."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from roberta_jax import convert, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small corpus written by the test: the demo corpus's first 40 KB.
TINY_OVERRIDES = [
    "--config.model.hidden_size=32", "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=4",
    "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=34",
    "--config.tokenizer.vocab_size=300", "--config.data.max_seq_length=32", "--config.batch_size=8",
    "--config.eval_every_steps=1000", "--config.log_every_steps=1", "--config.progress=False",
    "--config.export_hf=False",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    with open(os.path.join(REPO, "data", "demo_corpus.txt"), encoding="utf-8") as f:
        path.write_text(f.read(40_000), encoding="utf-8")
    return str(path)


def run_train(workdir, corpus, *overrides, devices=1, background=False, env_extra=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO, **(env_extra or {}))
    cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--config={REPO}/configs/tiny.py", f"--workdir={workdir}",
           f"--config.data.train_files={corpus}", *TINY_OVERRIDES, *overrides]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def losses(workdir):
    return {step: m["train/loss"] for step, m in metrics.read_metrics(str(workdir)).items() if "train/loss" in m}


def test_tiny_run_loss_falls_and_exports(tmp_path, corpus):
    # The test's own learning rate: this 32-wide model takes a faster one than configs/tiny.py's.
    run_train(tmp_path, corpus, "--config.total_steps=40", "--config.eval_every_steps=40",
              "--config.optimizer.peak_lr=2e-3", "--config.export_hf=True")
    loss = losses(tmp_path)
    assert sorted(loss) == list(range(1, 41))
    assert abs(loss[1] - np.log(300)) < 0.5
    assert np.mean([loss[s] for s in range(36, 41)]) < loss[1] - 0.7
    record = metrics.read_metrics(str(tmp_path))[40]
    assert record["eval/perplexity"] == pytest.approx(np.exp(record["eval/loss"]), rel=1e-5)
    for key in ("train/mlm_accuracy", "train/learning_rate", "train/grad_norm", "train/param_norm",
                "perf/tokens_per_sec", "perf/step_time", "eval/accuracy"):
        assert key in record
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    assert json.loads((tmp_path / "train_config.json").read_text())["total_steps"] == 40
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt"} <= set(os.listdir(tmp_path / "hf"))
    # The final checkpoint converts to the same HF weights as the export at the end of the run.
    convert.main(["to-hf", str(tmp_path), str(tmp_path / "converted")])
    exported, converted = (safetensors.numpy.load_file(tmp_path / d / "model.safetensors") for d in ("hf", "converted"))
    assert sorted(exported) == sorted(converted)
    for name in exported:
        np.testing.assert_array_equal(exported[name], converted[name])
    assert (tmp_path / "converted" / "merges.txt").exists()


MESH_STEPS = ["--config.total_steps=4", "--config.checkpoint.every_steps=100", "--config.model.hidden_dropout_prob=0.1",
              "--config.model.attention_probs_dropout_prob=0.1"]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory, corpus):
    workdir = tmp_path_factory.mktemp("one_device")
    run_train(workdir, corpus, *MESH_STEPS)
    return losses(workdir)


@pytest.mark.parametrize("mesh", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2)],
                         ids=["data8", "fsdp8", "data2_fsdp2_tensor2"])
def test_losses_agree_across_mesh_shapes(tmp_path, corpus, one_device_losses, mesh):
    run_train(tmp_path, corpus, *MESH_STEPS, *(f"--config.mesh.{k}={v}" for k, v in mesh.items()), devices=8)
    sharded = losses(tmp_path)
    assert sorted(sharded) == sorted(one_device_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([sharded[s] for s in range(1, 5)], [one_device_losses[s] for s in range(1, 5)],
                               atol=1e-5, rtol=0)


def test_a_checkpoint_restores_onto_another_mesh(tmp_path, corpus, one_device_losses):
    """Steps 1-2 on fsdp=8, steps 3-4 restored onto data=2 x fsdp=2 x tensor=2: the losses of one device."""
    run_train(tmp_path, corpus, *MESH_STEPS, "--config.total_steps=2", "--config.mesh.fsdp=8",
              "--config.mesh.data=1", devices=8)
    run_train(tmp_path, corpus, *MESH_STEPS, "--config.mesh.data=2", "--config.mesh.fsdp=2",
              "--config.mesh.tensor=2", devices=8)
    resumed = losses(tmp_path)
    assert sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_allclose([resumed[s] for s in range(1, 5)], [one_device_losses[s] for s in range(1, 5)],
                               atol=1e-5, rtol=0)


def wait_for_step(workdir, proc, step, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and max(losses(workdir), default=0) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def test_sigkill_and_restart_gives_the_same_losses(tmp_path, corpus):
    # Long enough that the kill lands mid-run however fast the steps are; the checkpoint is older
    # than the last logged step, so the restart repeats a few steps.
    args = ["--config.total_steps=400", "--config.checkpoint.every_steps=7"]
    run_train(tmp_path / "straight", corpus, *args)
    killed = tmp_path / "killed"
    proc = run_train(killed, corpus, *args, background=True)
    wait_for_step(killed, proc, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(killed)) < 400
    run_train(killed, corpus, *args)
    assert losses(killed) == losses(tmp_path / "straight")  # exact on CPU


def test_sigterm_saves_a_checkpoint_and_the_next_run_goes_on(tmp_path, corpus):
    args = ["--config.total_steps=500", "--config.checkpoint.every_steps=1000"]
    proc = run_train(tmp_path, corpus, *args, background=True)
    wait_for_step(tmp_path, proc, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3
    run_train(tmp_path, corpus, f"--config.total_steps={saved[0] + 2}", "--config.checkpoint.every_steps=1000")
    assert max(losses(tmp_path)) == saved[0] + 2


def test_unknown_config_key_names_the_nearest(tmp_path, corpus):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--config={REPO}/configs/tiny.py",
                          f"--workdir={tmp_path}", "--config.optimiser.peak_lr=1e-4"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "did you mean \"optimizer\"" in out.stderr.lower() and "Traceback" not in out.stderr


def test_non_finite_run_stops_with_a_clear_error(tmp_path, corpus):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--config={REPO}/configs/tiny.py", f"--workdir={tmp_path}",
           f"--config.data.train_files={corpus}", *TINY_OVERRIDES, "--config.total_steps=30",
           "--config.optimizer.peak_lr=1e30", "--config.optimizer.warmup_steps=0", "--config.max_nonfinite_steps=3"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "3 consecutive steps with non-finite loss or gradients" in out.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus):
    """Two local processes of one CPU device each, through jax.distributed, against one process
    with two devices: same global batch, same losses; then both resume from their checkpoint."""
    first = ["--config.total_steps=3", "--config.checkpoint.every_steps=3"]
    run_train(tmp_path / "single", corpus, "--config.total_steps=5", "--config.checkpoint.every_steps=3", devices=2)
    workdir = tmp_path / "multi"

    def launch(steps):
        port = free_port()
        procs = [
            run_train(workdir, corpus, *steps, "--config.distributed.initialize=True",
                      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                      devices=1, background=True)
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    launch(first)
    assert max(losses(workdir)) == 3
    launch(["--config.total_steps=5", "--config.checkpoint.every_steps=3"])  # restores step 3
    single, multi = losses(tmp_path / "single"), losses(workdir)
    assert sorted(multi) == sorted(single) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([multi[s] for s in single], [single[s] for s in single], atol=1e-5, rtol=0)
