"""train.py with its workdir in a bucket (a GCS emulator the tests start): the same losses as on local disk,
an export `transformers` loads, kills at random moments that lose and repeat nothing, and the lock."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from roberta_jax import storage
from roberta_jax.train import cli
from roberta_jax.train import workdir as workdir_files
from tests.train_runs import REPO, free_port, logged_losses, losses, run_train, wait_for_step

TOTAL = 60
RUN = [f"--config.total_steps={TOTAL}", "--config.checkpoint.every_steps=3"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, corpus):
    """The reference: the same run with a local workdir, exported."""
    workdir = tmp_path_factory.mktemp("local")
    run_train(workdir, corpus, *RUN, "--config.export_hf=True")
    return workdir


@pytest.fixture(scope="module")
def gs_run(gcs, corpus):
    """The same run with its workdir in a bucket."""
    workdir = f"gs://{gcs.new_bucket()}/run"
    run_train(workdir, corpus, *RUN, "--config.export_hf=True")
    return workdir


def test_a_gs_workdir_trains_like_a_local_one_and_exports_for_transformers(local_run, gs_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    workdir = gs_run
    remote, local = losses(workdir), losses(local_run)
    assert sorted(remote) == list(range(1, TOTAL + 1))
    np.testing.assert_allclose([remote[s] for s in local], [local[s] for s in local], atol=1e-6, rtol=0)
    assert str(TOTAL) in storage.listdir(f"{workdir}/{workdir_files.CHECKPOINTS}")
    assert not storage.exists(f"{workdir}/{workdir_files.LOCK}")
    export = f"{workdir}/{workdir_files.HF_EXPORT}"
    assert storage.listdir(export) == sorted(os.listdir(local_run / workdir_files.HF_EXPORT))
    assert not storage.exists(f"{export}.partial")
    for name in ("config.json", "vocab.json", "merges.txt"):  # written by the same code: the same bytes
        assert storage.read_bytes(f"{export}/{name}") == (local_run / workdir_files.HF_EXPORT / name).read_bytes()
    with storage.local_copy(export) as copy:
        _, info = transformers.RobertaForMaskedLM.from_pretrained(copy, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [p for p in (REPO, str(tmp_path)) for name in os.listdir(p) if name.startswith("gs:")]


def test_fine_tuning_from_a_gs_pretraining_workdir_into_a_gs_workdir_and_convert(gs_run, bucket):
    from roberta_jax.finetune import run
    from roberta_jax.tools import convert
    from tests.test_finetune import tiny_config

    config = tiny_config("sst2", gs_run)
    config.data.max_length = 32  # the tiny run's position table
    results = run.finetune_and_evaluate(config, f"{bucket}/sst2")
    assert results["final_step"] == 4 and np.isfinite(results["final"]["eval/loss"])
    assert storage.read_json(f"{bucket}/sst2/{workdir_files.RESULTS}") == json.loads(json.dumps(results))
    assert "model.safetensors" in storage.listdir(f"{bucket}/sst2/{workdir_files.BEST_HF}")
    assert sorted(losses(f"{bucket}/sst2")) == [1, 2, 3, 4]
    convert.main(["to-hf", gs_run, f"{bucket}/converted"])
    converted = storage.read_bytes(f"{bucket}/converted/model.safetensors")
    assert converted == storage.read_bytes(f"{gs_run}/{workdir_files.HF_EXPORT}/model.safetensors")


def test_kills_at_random_moments_lose_and_repeat_no_step(local_run, corpus, bucket):
    """SIGKILL three times at random moments (every checkpoint is asynchronous, so some land during a save),
    then a clean finish: the losses of the uninterrupted run, every step's record exactly once."""
    workdir, rng = f"{bucket}/killed", random.Random(0)
    for _ in range(3):
        proc = run_train(workdir, corpus, *RUN, background=True)
        wait_for_step(workdir, proc, max(logged_losses(workdir), default=0) + 1)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run ended before the kill; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert max(logged_losses(workdir)) < TOTAL
    run_train(workdir, corpus, *RUN)
    assert losses(workdir) == pytest.approx(losses(local_run), abs=1e-6)
    lines = [json.loads(line) for line in storage.read_lines(f"{workdir}/{workdir_files.METRICS}")]
    steps = [r["step"] for r in lines if "train/loss" in r]
    assert sorted(steps) == list(range(1, TOTAL + 1))
    checkpoints = f"{workdir}/{workdir_files.CHECKPOINTS}"
    for step in storage.listdir(checkpoints):  # no uncommitted step is left behind
        assert storage.exists(f"{checkpoints}/{step}/commit_success.txt"), step


def test_a_second_run_stops_at_once_naming_the_holder_and_stale_locks_are_taken_over(corpus, bucket):
    workdir = f"{bucket}/locked"
    lock = f"{workdir}/{workdir_files.LOCK}"
    first = run_train(workdir, corpus, "--config.total_steps=100000", background=True)
    try:
        deadline = time.time() + 120
        while not storage.exists(lock):
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
            time.sleep(0.1)
        second = run_train(workdir, corpus, *RUN, succeeds=False)
        assert second.returncode == cli.EXIT_BAD_INPUT
        assert f"workdir {workdir} is in use by pid {first.pid} on host" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock: another host's, whose heartbeat stopped long ago.
    holder = {**storage.read_json(lock), "host": "preempted-host",
              "heartbeat": time.time() - workdir_files.STALE_AFTER_S - 1}
    storage.write_json(lock, holder)
    third = run_train(workdir, corpus, "--config.total_steps=2")
    assert "taking over the stale lock" in third.stderr and "preempted-host" in third.stderr
    assert not storage.exists(lock)


def test_two_processes_on_a_gs_workdir_reading_gs_prepared_data_match_one(corpus, bucket, tmp_path):
    """Shards prepared into the bucket; two `jax.distributed` processes (one CPU device each) on a gs://
    workdir against one process with two devices reading the same shards: the same losses."""
    prepared = f"{bucket}/prepared"
    done = subprocess.run(
        [sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py", f"--out={prepared}",
         f"--config.data.train_files={corpus}", "--config.data.eval_fraction=0", "--config.tokenizer.vocab_size=300",
         "--config.data.max_seq_length=32", "--config.progress=False", "--num_workers=1", "--piece_mb=0.01"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    args = [f"--config.data.prepared={prepared}", "--config.data.eval_fraction=0", "--config.total_steps=6",
            "--config.checkpoint.every_steps=3"]
    run_train(tmp_path / "single", corpus, *args, devices=2)
    workdir, port = f"{bucket}/multi", free_port()
    procs = [run_train(workdir, corpus, *args, "--config.distributed.initialize=True",
                       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                       background=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    single, multi = losses(tmp_path / "single"), losses(workdir)
    assert sorted(multi) == sorted(single) == list(range(1, 7))
    np.testing.assert_allclose([multi[s] for s in single], [single[s] for s in single], atol=1e-5, rtol=0)


def test_bad_bucket_paths_are_one_line_before_any_work(corpus, gcs, tmp_path):
    """A missing bucket is named before tokenization or a step; `gs:/` (one slash) never becomes a local
    directory named `gs:`."""
    missing = run_train("gs://no-such-bucket-here/run", corpus, succeeds=False)
    assert missing.returncode == cli.EXIT_BAD_INPUT
    assert missing.stderr.splitlines()[-1] == ("train.py: error: gs://no-such-bucket-here/run: bucket "
                                               "gs://no-such-bucket-here does not exist (or is not visible to "
                                               "these credentials)")
    assert "Tokenizing" not in missing.stderr
    one_slash = run_train("gs:/bkt/run", corpus, succeeds=False)
    assert one_slash.returncode == cli.EXIT_BAD_INPUT
    assert "gs:/bkt/run: a bucket path is written gs://bucket/path (two slashes)" in one_slash.stderr
    assert not [name for name in os.listdir(REPO) if name.startswith("gs:")]
