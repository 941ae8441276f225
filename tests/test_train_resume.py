"""train.py interrupted and across hosts: SIGKILL and SIGTERM resume exactly, two processes match one."""

import os
import signal
from pathlib import Path

import numpy as np

from roberta_jax.train import cli
from roberta_jax.train import workdir as workdir_files
from tests.train_runs import free_port, losses, run_train, wait_for_step


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
    assert proc.wait(timeout=120) == cli.EXIT_INTERRUPTED  # not 0: a scheduler sees it did not finish
    saved = [int(d) for d in os.listdir(tmp_path / workdir_files.CHECKPOINTS) if d.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3
    run_train(tmp_path, corpus, f"--config.total_steps={saved[0] + 2}", "--config.checkpoint.every_steps=1000")
    assert max(losses(tmp_path)) == saved[0] + 2


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus):
    """Two local processes of one CPU device each, through jax.distributed, against one process
    with two devices: same global batch, same losses; then both resume from their checkpoint, the newest
    of which was made unreadable: process 0 moves it aside, both take the one before and save it again."""
    first = ["--config.total_steps=3", "--config.checkpoint.every_steps=2"]
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
    checkpoints = workdir / workdir_files.CHECKPOINTS
    for root, _, files in os.walk(checkpoints / "3" / "state"):
        for name in files:
            (Path(root) / name).write_bytes(b"\0garbage")
    launch(["--config.total_steps=5", "--config.checkpoint.every_steps=3"])  # restores step 2
    [aside] = os.listdir(f"{checkpoints}.unreadable")
    assert aside.startswith("3-") and {"3", "5"} <= set(os.listdir(checkpoints))  # step 3 saved again
    single, multi = losses(tmp_path / "single"), losses(workdir)
    assert sorted(multi) == sorted(single) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([multi[s] for s in single], [single[s] for s in single], atol=1e-5, rtol=0)
