"""train.py from a prepared directory (`python -m roberta_jax.tools.prepare`): two processes each read a disjoint
half of every global batch and, SIGKILLed and resumed, match one process with two devices;
a run whose row length is not the prepared one, or whose prepared directory lacks a shard, stops before its first
step, naming what is wrong."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from roberta_jax.data import shards
from roberta_jax.train import workdir as workdir_files
from tests.train_runs import REPO, free_port, losses, run_train, wait_for_step

RECORD_ROWS = [os.path.join(REPO, "tests", "record_rows.py")]
BATCH, READ_AHEAD, SEED = 8, 4, 0  # tiny overrides' batch_size, data.read_ahead's and config.seed's defaults


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The test corpus prepared with the tiny run's tokenizer settings and rows, in shards of ~4 KB of text."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    cmd = [sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py", f"--out={out}",
           f"--config.data.train_files={corpus}", "--config.data.eval_fraction=0", "--config.tokenizer.vocab_size=300",
           "--config.data.max_seq_length=32", "--config.progress=False", "--num_workers=2", "--piece_mb=0.004"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = shards.read_manifest(out)
    assert json.loads(done.stdout.splitlines()[-1]) == manifest["stats"]
    return out, manifest


def args(prepared, *more):
    return [f"--config.data.prepared={prepared[0]}", "--config.data.eval_fraction=0", *more]


def rows_read(directory):
    """{process index: [row indices of each read]} from record_rows.py's files."""
    reads = {}
    for path in sorted(pathlib.Path(directory).glob("rows-*.txt")):
        reads.setdefault(int(path.name.split("-")[1]), []).extend(
            [int(r) for r in line.split()] for line in path.read_text().splitlines())
    return reads


@pytest.fixture(scope="module")
def straight(prepared, corpus, tmp_path_factory):
    """Per-step losses of one process with two devices, 40 steps from the prepared shards, uninterrupted."""
    workdir = tmp_path_factory.mktemp("straight")
    run_train(workdir, corpus, *args(prepared, "--config.total_steps=40", "--config.checkpoint.every_steps=7"),
              devices=2)
    return losses(workdir)


def test_two_processes_read_disjoint_halves_match_one_and_resume_after_sigkill(prepared, corpus, straight, tmp_path):
    record = tmp_path / "rows"
    record.mkdir()
    workdir = tmp_path / "multi"
    run_args = args(prepared, "--config.total_steps=40", "--config.checkpoint.every_steps=7")

    def launch():
        distributed = ["--config.distributed.initialize=True", "--config.distributed.num_processes=2",
                       f"--config.distributed.coordinator_address=127.0.0.1:{free_port()}"]
        return [run_train(workdir, corpus, *run_args, *distributed, f"--config.distributed.process_id={i}",
                          background=True, wrapper=RECORD_ROWS, env={"RECORD_ROWS_DIR": str(record)})
                for i in range(2)]

    procs = launch()
    wait_for_step(workdir, procs[0], 10)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert max(losses(workdir)) < 40
    procs = launch()
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    multi = losses(workdir)
    assert sorted(multi) == sorted(straight) == list(range(1, 41))
    np.testing.assert_allclose([multi[s] for s in straight], [straight[s] for s in straight], atol=1e-5, rtol=0)

    # Epoch 0's order (batches.py's rule); host p's rows of batch b are order[b*G + p*G/2 :][:G/2].
    num_rows = prepared[1]["stats"]["train/rows"]
    order = np.random.default_rng([SEED, 0]).permutation(num_rows)[: num_rows // BATCH * BATCH]
    order = order.reshape(-1, 2, BATCH // 2)
    reads = rows_read(record)
    assert sorted(reads) == [0, 1]
    opened = {p: {r for x in host_reads for r in x} for p, host_reads in reads.items()}
    assert not opened[0] & opened[1]
    for p, host_reads in reads.items():
        assert {len(x) for x in host_reads} == {BATCH // 2}
        assert set(order[:40, p].ravel()) <= opened[p] <= set(order[: 40 + READ_AHEAD + 1, p].ravel())
        assert len(opened[p]) < num_rows / 2


def test_other_row_length_stops_before_a_step(prepared, corpus, tmp_path):
    out = run_train(tmp_path, corpus, *args(prepared, "--config.data.max_seq_length=16"), succeeds=False)
    assert f"{prepared[0]} holds rows of max_seq_length=32, the config asks for data.max_seq_length=16" in out.stderr
    assert not (tmp_path / workdir_files.METRICS).exists()  # stopped before any step was logged


def test_a_missing_shard_stops_before_a_step_naming_it(prepared, corpus, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(prepared[0], damaged)
    name = prepared[1]["splits"]["train"]["shards"][-1]["name"]
    (damaged / "train" / f"{name}.npy").unlink()
    out = run_train(tmp_path / "run", corpus, *args((damaged, prepared[1])), succeeds=False)
    assert out.returncode == 2
    assert f"train.py: error: prepared directory {damaged} is damaged: train/{name}.npy is missing, manifest.json " \
           "lists" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run" / workdir_files.METRICS).exists()
