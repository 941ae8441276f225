"""The workdir contract: fixed architecture, tokenizer and row length; one run at a time (the lock)."""

import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest

from roberta_jax.train import cli
from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.config import default_config
from tests.train_runs import losses, run_train, wait_for_step

# Long enough for five kills at random points of one run (the fault-injection test); the other tests use
# the finished workdir.
RUN = ["--config.total_steps=60", "--config.checkpoint.every_steps=2"]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(workdir, pid: int, host: str = socket.gethostname()) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, workdir_files.LOCK), "w", encoding="utf-8") as f:
        json.dump({"host": host, "pid": pid, "started": "2026-01-01 00:00:00"}, f)


def snapshot(workdir) -> dict:
    """Every file under `workdir` with its size and modification time."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """A persistent compilation cache shared by this module's train.py runs (about half of a restart's time
    is compiling the same steps again)."""
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("compilation_cache")),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    previous = {k: os.environ.get(k) for k in cache}
    os.environ.update(cache)
    yield
    for k, v in previous.items():
        os.environ.pop(k) if v is None else os.environ.update({k: v})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A run uninterrupted, started over a stale lock (its pid is gone): it takes the lock over and finishes."""
    workdir = tmp_path_factory.mktemp("trained")
    write_lock(workdir, dead_pid())
    run_train(workdir, corpus, *RUN)
    return workdir


def test_a_stale_lock_is_taken_over_and_the_lock_goes_with_the_run(trained):
    assert sorted(losses(trained)) == list(range(1, 61))
    assert not os.path.exists(trained / workdir_files.LOCK)
    assert json.loads((trained / workdir_files.CONTRACT).read_text())["model.hidden_size"] == 32


def test_a_changed_architecture_stops_before_touching_the_workdir(trained, corpus):
    before = snapshot(trained)
    out = run_train(trained, corpus, *RUN, "--config.model.hidden_size=64", "--config.data.max_seq_length=16",
                    succeeds=False)
    assert out.returncode == cli.EXIT_BAD_INPUT
    error = out.stderr.strip().splitlines()[-1]
    assert "this run changes model.hidden_size: 32 -> 64, data.max_seq_length: 32 -> 16." in error
    assert "Use a new --workdir" in error and "Traceback" not in out.stderr
    assert snapshot(trained) == before


def test_a_failed_start_leaves_the_config_record(trained, corpus):
    record = (trained / workdir_files.TRAIN_CONFIG).read_text()
    # The saved data position was for a global batch of 8: the restore refuses 4, after the data is built.
    out = run_train(trained, corpus, *RUN, "--config.batch_size=4", "--config.total_steps=62", succeeds=False)
    assert out.returncode == cli.EXIT_BAD_INPUT and "global_batch_size" in out.stderr.splitlines()[-1]
    assert (trained / workdir_files.TRAIN_CONFIG).read_text() == record
    assert sorted(losses(trained)) == list(range(1, 61))


def test_a_second_run_on_a_workdir_stops_at_once(tmp_path, corpus):
    write_lock(tmp_path, os.getpid())  # this test's own process: alive
    out = run_train(tmp_path, corpus, *RUN, succeeds=False)
    assert out.returncode == cli.EXIT_BAD_INPUT
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in out.stderr.splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == [workdir_files.LOCK]


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    write_lock(tmp_path, dead_pid(), host="another-host")
    with pytest.raises(workdir_files.WorkdirError, match="in use by pid .* on host another-host"):
        workdir_files.Lock(str(tmp_path)).acquire()
    lock = workdir_files.Lock(str(tmp_path / "free"))
    os.makedirs(tmp_path / "free")
    lock.acquire()
    assert json.loads((tmp_path / "free" / workdir_files.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path / "free") == []


def test_a_workdir_without_a_contract_is_checked_against_its_model_config(tmp_path):
    (tmp_path / workdir_files.CHECKPOINTS / "100").mkdir(parents=True)
    (tmp_path / workdir_files.MODEL_CONFIG).write_text(json.dumps({"hidden_size": 128, "num_hidden_layers": 4}))
    contract = {"model.hidden_size": 64, "model.num_hidden_layers": 4, "data.max_seq_length": 128}
    with pytest.raises(workdir_files.WorkdirError, match=r"changes model.hidden_size: 128 -> 64\. Nothing"):
        workdir_files.check_contract(str(tmp_path), contract)
    workdir_files.check_contract(str(tmp_path), dict(contract, **{"model.hidden_size": 128}))


def logged_steps(workdir) -> list[int]:
    """The step of every train/loss line of metrics.jsonl, in file order (duplicates kept)."""
    with open(workdir / workdir_files.METRICS, encoding="utf-8") as f:
        return [r["step"] for r in map(json.loads, f) if "train/loss" in r]


def test_five_kills_at_random_points_then_a_clean_finish_lose_nothing(tmp_path, corpus, trained):
    """SIGKILL five times at random moments of one run (right after a checkpoint's flush is while its
    asynchronous save is being written), then let it finish: the losses of every step are those of the
    uninterrupted run, metrics.jsonl holds each step once, and the export loads in transformers."""
    transformers = pytest.importorskip("transformers")
    workdir = tmp_path / "killed"
    rng = random.Random(0)
    reached = 0
    for kill in range(5):
        proc = run_train(workdir, corpus, *RUN, background=True)
        wait_for_step(workdir, proc, reached + 1)  # logs reach the disk at each checkpoint
        time.sleep(rng.choice([0.0, 0.0, 0.02, 0.05, 0.1]))
        assert proc.poll() is None, f"run {kill} finished before its kill"
        proc.kill()
        proc.wait()
        reached = max(losses(workdir))
    assert reached < 60
    run_train(workdir, corpus, *RUN, "--config.export_hf=True")
    assert logged_steps(workdir) == list(range(1, 61))
    assert losses(workdir) == losses(trained)  # exact on CPU
    model = transformers.AutoModelForMaskedLM.from_pretrained(workdir / workdir_files.HF_EXPORT)
    assert model.config.hidden_size == 32


def test_a_tokenizer_is_fixed_by_its_files_not_its_path(tmp_path):
    def tokenizer_dir(name, vocab):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "vocab.json").write_text(vocab)
        (tmp_path / name / "merges.txt").write_text("#version: 0.2\n")
        return str(tmp_path / name)

    config = default_config()
    config.tokenizer.path = tokenizer_dir("a", '{"x": 0}')
    workdir_files.write_contract(str(tmp_path), workdir_files.pretraining_contract(config))
    config.tokenizer.path = tokenizer_dir("moved", '{"x": 0}')
    workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(config))
    config.tokenizer.path = tokenizer_dir("other", '{"y": 0}')
    with pytest.raises(workdir_files.WorkdirError, match=r"changes tokenizer.fingerprint: '\w+' -> '\w+'\."):
        workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(config))
    config.tokenizer.path = ""  # a tokenizer trained in the workdir instead
    with pytest.raises(workdir_files.WorkdirError, match=r"tokenizer.vocab_size: '\(none\)' -> 50265, tokenizer.min_"
                                                         r"frequency: '\(none\)' -> 2, tokenizer.fingerprint: '\w+' -> "
                                                         r"'\(none\)'\."):
        workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(config))


def test_a_gs_lock_is_created_once_beats_and_is_taken_over_when_its_heartbeat_stops(bucket, monkeypatch, caplog):
    """On object storage: create-if-absent, a heartbeat refreshed in the background, and another host's lock
    taken over (with a warning) only once its heartbeat is older than STALE_AFTER_S."""
    from roberta_jax import storage

    monkeypatch.setattr(workdir_files, "HEARTBEAT_S", 0.05)
    workdir = f"{bucket}/run"
    lock = workdir_files.Lock(workdir)
    lock.acquire()
    first = storage.read_json(lock.path)["heartbeat"]
    deadline = time.time() + 10
    while storage.read_json(lock.path)["heartbeat"] == first:
        assert time.time() < deadline, "the heartbeat was never refreshed"
        time.sleep(0.05)
    with pytest.raises(workdir_files.WorkdirError, match=f"workdir {workdir} is in use by pid {os.getpid()}"):
        workdir_files.Lock(workdir).acquire()
    lock.release()
    assert not storage.exists(lock.path)

    beating = {"host": "another-host", "pid": 1, "token": "t", "started": "-", "heartbeat": time.time()}
    storage.write_json(lock.path, beating)
    with pytest.raises(workdir_files.WorkdirError, match="on host another-host"):
        workdir_files.Lock(workdir).acquire()
    storage.write_json(lock.path, {**beating, "heartbeat": time.time() - workdir_files.STALE_AFTER_S - 1})
    taker = workdir_files.Lock(workdir)
    with caplog.at_level("WARNING", logger="absl"):
        taker.acquire()
    assert "taking over the stale lock" in caplog.text and "another-host" in caplog.text
    assert storage.read_json(lock.path)["pid"] == os.getpid()
    taker.release()


def test_what_a_row_is_is_fixed_but_masking_is_not(tmp_path):
    config = default_config()
    workdir_files.write_contract(str(tmp_path), workdir_files.pretraining_contract(config))
    changes = {"input_format": "doc_sentences", "cross_document_attention": False, "doc_split": "line",
               "doc_separator": "<|endoftext|>"}
    for key, value in changes.items():
        changed = default_config()
        changed.data[key] = value
        with pytest.raises(workdir_files.WorkdirError, match=rf"changes data.{key}: {default_config().data[key]!r} "
                                                             rf"-> {value!r}\. Nothing"):
            workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(changed))
    config.masking.update(whole_word=True, static_copies=4)  # drawn at each step from the same rows
    workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(config))
    config.data.prepared = str(tmp_path / "prepared")  # its shards fix the documents, whatever doc_split says
    assert not any(k.startswith("data.doc_") for k in workdir_files.pretraining_contract(config))


def test_a_contract_recorded_before_the_row_fields_takes_the_recorded_config_or_the_defaults(tmp_path):
    """A workdir.json without `data.input_format` & co. was made with the values of train_config.json, or else
    the defaults: a rerun with them continues, another stops naming the field."""
    contract = workdir_files.pretraining_contract(default_config())
    old = {k: v for k, v in contract.items() if k not in workdir_files.ROW_FIELDS}
    (tmp_path / workdir_files.CONTRACT).write_text(json.dumps(old))
    workdir_files.check_contract(str(tmp_path), contract)
    doc_sentences = default_config()
    doc_sentences.data.input_format = "doc_sentences"
    with pytest.raises(workdir_files.WorkdirError, match=r"changes data.input_format: 'full_sentences' -> "
                                                         r"'doc_sentences'\. Nothing"):
        workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(doc_sentences))
    (tmp_path / workdir_files.TRAIN_CONFIG).write_text(doc_sentences.to_json_best_effort())
    workdir_files.check_contract(str(tmp_path), workdir_files.pretraining_contract(doc_sentences))
    with pytest.raises(workdir_files.WorkdirError, match=r"changes data.input_format: 'doc_sentences' -> "
                                                         r"'full_sentences'\. Nothing"):
        workdir_files.check_contract(str(tmp_path), contract)
