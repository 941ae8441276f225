"""The files of a workdir, each name defined once.

A pretraining workdir (`train.py --workdir DIR`):

    run.lock            host, pid and heartbeat of the run using the workdir (process 0; removed when it ends)
    workdir.json        what the workdir is fixed to at its first step: architecture, tokenizer, what a row is
    train_config.json   the resolved config of the last start that reached training (process 0)
    model_config.json   the architecture, as HF config.json (process 0, before the first step)
    tokenizer/          the tokenizer trained on the corpus, when `tokenizer.path` is not set
    data_cache/         token ids and packed rows, memory-mapped (`data.cache_dir` moves it)
    checkpoints/        Orbax checkpoints: train state + data-iterator position (every host)
    metrics.jsonl       every step's scalars; TensorBoard events beside it (process 0)
    hf/                 the final model for `transformers` (process 0)

A fine-tuning workdir (`finetune.py --workdir DIR`) holds the lock, `workdir.json`, `finetune_config.json`,
`checkpoints/`, the metrics, `best_hf/` with `best.json` (the best evaluation so far) and `eval_results.json`
at the end.

A run takes the lock first (a second run on the workdir stops at once), then checks `workdir.json` against
its config: a changed architecture, tokenizer or kind of row (`data.max_seq_length`, `input_format`, ...;
fine-tuning: task, labels, `data.max_length` or the architecture of `init_from`) stops it before anything is
written, naming each differing field.

This module imports nothing heavy: the tools that read workdirs use it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from roberta_jax import storage
from roberta_jax.data.batches import PAIR_FORMATS
from roberta_jax.data.tokenizer import is_tokenizer_dir
from roberta_jax.train.config import prepared_directory

TRAIN_CONFIG = "train_config.json"
FINETUNE_CONFIG = "finetune_config.json"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer"
DATA_CACHE = "data_cache"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
HF_EXPORT = "hf"
BEST_HF = "best_hf"
BEST_RECORD = "best.json"
RESULTS = "eval_results.json"
LOCK = "run.lock"
CONTRACT = "workdir.json"
# The lock's heartbeat: refreshed this often, and taken over by another run once this old.
HEARTBEAT_S = 60
STALE_AFTER_S = 600

# Contract fields that decide what a pretraining row is, added to `workdir.json` after it first existed: a
# workdir.json without one was made with the value its train_config.json records, else with this default.
ROW_FIELDS = {"data.input_format": "full_sentences", "data.cross_document_attention": True,
              "data.doc_split": "blank_line", "data.doc_separator": ""}

log = logging.getLogger("absl")


class WorkdirError(RuntimeError):
    """The workdir cannot take this run: in use by another run, or fixed to another architecture."""


def is_pretraining_workdir(path: str) -> bool:
    """A directory `train.py` wrote: its architecture sits beside the checkpoints."""
    return storage.isfile(storage.join(path, MODEL_CONFIG))


def tokenizer_dir(workdir: str) -> str:
    """Where a pretraining workdir's tokenizer is: its `tokenizer/` or `hf/`, or the `tokenizer.path` its
    `train_config.json` names."""
    candidates = [storage.join(workdir, TOKENIZER), storage.join(workdir, HF_EXPORT)]
    record = storage.join(workdir, TRAIN_CONFIG)
    candidates.append((storage.read_json(record) or {}).get("tokenizer", {}).get("path", ""))
    for path in candidates:
        if path and is_tokenizer_dir(path):
            return path
    raise FileNotFoundError(f"no tokenizer in {workdir}/{TOKENIZER} or {workdir}/{HF_EXPORT}, and {record} names none")


class Lock:
    """`run.lock` in a workdir, local or on `gs://`: `{"host", "pid", "token", "started", "heartbeat"}` of the run
    using it. Taken by create-if-absent (a hard link locally, a generation precondition on object storage, so
    of two runs racing exactly one wins) and refreshed every `HEARTBEAT_S` seconds by a background thread. A lock
    is stale, and taken over with a warning in the log, when its heartbeat is older than `STALE_AFTER_S` (a host
    that was preempted or lost), or when it names a process of this host that has ended."""

    def __init__(self, workdir: str):
        self.path = storage.join(workdir, LOCK)
        self.held = False
        self._stop = threading.Event()
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> None:
        for _ in range(2):
            if storage.create_exclusive(self.path, self._record()):
                self.held = True
                self._start_heartbeat()
                return
            holder = storage.read_json(self.path) or {}
            why = _stale(holder, self._me["host"])
            if why is None:
                raise WorkdirError(
                    f"workdir {storage.parent(self.path)} is in use by pid {holder.get('pid')} on host "
                    f"{holder.get('host')} (since {holder.get('started')}, last heartbeat {_age(holder)}); wait for "
                    f"that run to end, use another --workdir, or delete {self.path} if that run is gone (a lock is "
                    f"taken over by itself once its heartbeat is {STALE_AFTER_S} s old)"
                )
            log.warning("taking over the stale lock %s of pid %s on host %s (%s)", self.path, holder.get("pid"),
                        holder.get("host"), why)
            storage.remove(self.path)
        raise WorkdirError(f"could not take {self.path}: another run took it over at the same moment")

    def release(self) -> None:
        self._stop.set()
        if self.held and self._holds():
            storage.remove(self.path)
        self.held = False

    def _record(self) -> bytes:
        return json.dumps({**self._me, "heartbeat": time.time()}).encode()

    def _holds(self) -> bool:
        return (storage.read_json(self.path) or {}).get("token") == self._me["token"]

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    if not self._holds():
                        log.error("the lock %s is no longer this run's (taken over?); another run may be using "
                                  "the workdir", self.path)
                        return
                    storage.write_bytes(self.path, self._record())
                except Exception as err:  # noqa: BLE001 - a missed beat is retried; the run goes on
                    log.warning("could not refresh the lock %s: %s", self.path, err)

        threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True).start()


def _stale(holder: dict, host: str) -> str | None:
    """Why the lock `holder` is stale, or None while its run may be alive: a heartbeat older than
    `STALE_AFTER_S`, or a process of this host that has ended (another host's cannot be checked from here)."""
    heartbeat = holder.get("heartbeat")
    if isinstance(heartbeat, (int, float)) and time.time() - heartbeat > STALE_AFTER_S:
        return f"last heartbeat {_age(holder)}, over the {STALE_AFTER_S} s limit"
    if holder.get("host") != host or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return "its process is no longer running"
    except PermissionError:  # alive, another user's
        return None
    return None


def _age(holder: dict) -> str:
    heartbeat = holder.get("heartbeat")
    return f"{time.time() - heartbeat:.0f} s ago" if isinstance(heartbeat, (int, float)) else "unknown"


def tokenizer_fingerprint(directory: str) -> str:
    """sha256 (first 16 hex digits) of a tokenizer directory's vocab.json and merges.txt (byte-level BPE),
    or of its tokenizer.json (a SentencePiece tokenizer, which has no vocab.json)."""
    digest = hashlib.sha256()
    names = ("vocab.json", "merges.txt") if storage.isfile(storage.join(directory, "vocab.json")) else (
        "tokenizer.json",)
    for name in names:
        path = storage.join(directory, name)
        if storage.isfile(path):
            digest.update(storage.read_bytes(path))
    return digest.hexdigest()[:16]


def pretraining_contract(config) -> dict:
    """The config fields a pretraining workdir is fixed to, by config key: the architecture (dropout aside),
    the tokenizer (its files' fingerprint, or the fields it is trained with), what a row is (`data.max_seq_length`,
    `input_format`, `cross_document_attention`, and the documents' `doc_split` / `doc_separator` unless the rows
    come `prepared`) and, for the pair input formats, the next-sentence head. Masking is not fixed: it is drawn
    at each step from the same rows and leaves the data position and the params' shapes as they are."""
    contract = {f"model.{k}": v for k, v in config.model.items() if not k.endswith("dropout_prob")}
    contract["data.max_seq_length"] = config.data.max_seq_length
    rows = [k for k in ROW_FIELDS if not (config.data.prepared and k.startswith("data.doc_"))]
    contract.update({k: config.data[k[len("data."):]] for k in rows})
    contract["tokenizer.kind"] = config.tokenizer.kind
    if config.data.input_format in PAIR_FORMATS:  # the params hold the next-sentence head
        contract["next_sentence_head"] = True
    if config.tokenizer.path:  # its files, wherever they are
        contract["tokenizer.fingerprint"] = tokenizer_fingerprint(config.tokenizer.path)
    elif prepared_directory(config):  # the tokenizer the shards were made with
        contract["tokenizer.fingerprint"] = tokenizer_fingerprint(storage.join(prepared_directory(config), TOKENIZER))
    else:
        contract["tokenizer.vocab_size"] = config.tokenizer.vocab_size
        contract["tokenizer.min_frequency"] = config.tokenizer.min_frequency
    return contract


def finetuning_contract(config, architecture, labels: list[str] | None) -> dict:
    """The fields a fine-tuning workdir is fixed to, by config key: `task`, its `labels` (None for a task without
    label names), `data.max_length` and the head's architecture (`architecture`: a `model.config.RobertaConfig`,
    dropout aside, `num_labels` for its label maps), as JSON holds them."""
    contract = {"task": config.task, "labels": labels, "data.max_length": config.data.max_length}
    for field in dataclasses.fields(architecture):
        if field.name not in ("extra", "id2label", "label2id", "architectures") and "dropout" not in field.name:
            contract[f"model.{field.name}"] = getattr(architecture, field.name)
    contract["model.num_labels"] = len(architecture.id2label or {})
    return json.loads(json.dumps(contract))


def check_contract(workdir: str, contract: dict) -> None:
    """Raises `WorkdirError` naming every field where `contract` differs from the workdir's `workdir.json`
    (for a workdir older than that file, with checkpoints: the architecture in `model_config.json`)."""
    fixed = storage.read_json(storage.join(workdir, CONTRACT))
    if fixed is None and _has_checkpoints(workdir):
        model = storage.read_json(storage.join(workdir, MODEL_CONFIG)) or {}
        fixed = {k: model[k[len("model."):]] for k in contract
                 if k.startswith("model.") and k != "model.vocab_size" and k[len("model."):] in model}
        contract = {k: contract[k] for k in fixed}
    fixed = {**_unrecorded_row_fields(workdir, fixed, contract), **fixed} if fixed is not None else contract
    changed = changed_fields(fixed, contract)
    if changed:
        raise WorkdirError(
            f"workdir {workdir} is fixed to another architecture, tokenizer, task or kind of row; this run changes "
            f"{', '.join(changed)}. Nothing was touched. Use a new --workdir, or rerun with the workdir's values "
            f"(in {storage.join(workdir, CONTRACT)}) to continue it; to reuse the directory on purpose, delete "
            f"its {CHECKPOINTS}/ and {CONTRACT} (and a pretraining workdir's {MODEL_CONFIG}) first"
        )


def _unrecorded_row_fields(workdir: str, fixed: dict, contract: dict) -> dict:
    """The `ROW_FIELDS` of `contract` that a `workdir.json` written before them lacks, with the values the
    workdir was made with: as its `train_config.json` records them, else the defaults of that time."""
    record = storage.read_json(storage.join(workdir, TRAIN_CONFIG)) or {}
    return {k: record.get("data", {}).get(k[len("data."):], default) for k, default in ROW_FIELDS.items()
            if k in contract and k not in fixed}


def changed_fields(fixed: dict, new: dict) -> list[str]:
    """`key: old -> new` for each key whose value differs between `fixed` and `new` ('(none)' where one lacks it):
    the words of every "this run changes ..." error."""
    return [f"{k}: {fixed.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}"
            for k in {**new, **fixed} if fixed.get(k) != new.get(k)]


def write_contract(workdir: str, contract: dict) -> None:
    """Fixes the workdir to `contract` (once: at its first step)."""
    path = storage.join(workdir, CONTRACT)
    if not storage.exists(path):
        storage.write_json(path, contract, indent=2, sort_keys=True)


def _has_checkpoints(workdir: str) -> bool:
    return any(name.isdigit() for name in storage.listdir(storage.join(workdir, CHECKPOINTS)))
