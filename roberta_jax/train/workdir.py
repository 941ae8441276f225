"""The files of a workdir, each name defined once.

A pretraining workdir (`train.py --workdir DIR`):

    run.lock            host and pid of the run using the workdir (process 0; removed when it ends)
    workdir.json        what the workdir is fixed to at its first step: architecture, tokenizer, row length
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
its config: a changed architecture, tokenizer or `data.max_seq_length` (fine-tuning: task, labels,
`data.max_length` or the architecture of `init_from`) stops it before anything is written, naming each
differing field.

This module imports nothing heavy: the tools that read workdirs use it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time

from roberta_jax.data.batches import PAIR_FORMATS
from roberta_jax.data.tokenizer import is_tokenizer_dir

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

log = logging.getLogger("absl")


class WorkdirError(RuntimeError):
    """The workdir cannot take this run: in use by another run, or fixed to another architecture."""


def is_pretraining_workdir(path: str) -> bool:
    """A directory `train.py` wrote: its architecture sits beside the checkpoints."""
    return os.path.isfile(os.path.join(path, MODEL_CONFIG))


def tokenizer_dir(workdir: str) -> str:
    """Where a pretraining workdir's tokenizer is: its `tokenizer/` or `hf/`, or the `tokenizer.path` its
    `train_config.json` names."""
    candidates = [os.path.join(workdir, TOKENIZER), os.path.join(workdir, HF_EXPORT)]
    record = os.path.join(workdir, TRAIN_CONFIG)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            candidates.append(json.load(f).get("tokenizer", {}).get("path", ""))
    for path in candidates:
        if path and is_tokenizer_dir(path):
            return path
    raise FileNotFoundError(f"no tokenizer in {workdir}/{TOKENIZER} or {workdir}/{HF_EXPORT}, and {record} names none")


class Lock:
    """`run.lock` in a workdir: `{"host", "pid", "started"}` of the run using it. Taken atomically (written
    aside, then hard-linked into place); a lock whose pid is gone on this host is stale and taken over."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        aside = f"{self.path}.{os.getpid()}"
        with open(aside, "w", encoding="utf-8") as f:
            json.dump(me, f)
        try:
            for _ in range(2):
                try:
                    os.link(aside, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    holder = _read_json(self.path) or {}
                    if not _stale(holder, me["host"]):
                        raise WorkdirError(
                            f"workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on host "
                            f"{holder.get('host')} (since {holder.get('started')}); wait for that run to end, use "
                            f"another --workdir, or delete {self.path} if that run is gone"
                        ) from None
                    log.warning("taking over the stale lock %s of pid %s (no longer running)", self.path,
                                holder.get("pid"))
                    os.remove(self.path)
        finally:
            os.remove(aside)

    def release(self) -> None:
        if self.held and (_read_json(self.path) or {}).get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False


def _stale(holder: dict, host: str) -> bool:
    """A lock of this host whose process has ended (another host's lock cannot be checked from here)."""
    if holder.get("host") != host or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def tokenizer_fingerprint(directory: str) -> str:
    """sha256 (first 16 hex digits) of a tokenizer directory's vocab.json and merges.txt (byte-level BPE),
    or of its tokenizer.json (a SentencePiece tokenizer, which has no vocab.json)."""
    digest = hashlib.sha256()
    names = ("vocab.json", "merges.txt") if os.path.isfile(os.path.join(directory, "vocab.json")) else (
        "tokenizer.json",)
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def pretraining_contract(config) -> dict:
    """The config fields a pretraining workdir is fixed to, by config key: the architecture (dropout aside),
    the tokenizer (its files' fingerprint, or the fields it is trained with), `data.max_seq_length` and, for
    the pair input formats, the next-sentence head."""
    contract = {f"model.{k}": v for k, v in config.model.items() if not k.endswith("dropout_prob")}
    contract["data.max_seq_length"] = config.data.max_seq_length
    contract["tokenizer.kind"] = config.tokenizer.kind
    if config.data.input_format in PAIR_FORMATS:  # the params hold the next-sentence head
        contract["next_sentence_head"] = True
    if config.tokenizer.path:  # its files, wherever they are
        contract["tokenizer.fingerprint"] = tokenizer_fingerprint(config.tokenizer.path)
    elif config.data.prepared:  # the tokenizer the shards were made with
        contract["tokenizer.fingerprint"] = tokenizer_fingerprint(os.path.join(config.data.prepared, TOKENIZER))
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
    fixed = _read_json(os.path.join(workdir, CONTRACT))
    if fixed is None and _has_checkpoints(workdir):
        model = _read_json(os.path.join(workdir, MODEL_CONFIG)) or {}
        fixed = {k: model[k[len("model."):]] for k in contract
                 if k.startswith("model.") and k != "model.vocab_size" and k[len("model."):] in model}
        contract = {k: contract[k] for k in fixed}
    fixed = fixed or contract
    changed = [f"{k}: {fixed.get(k, '(none)')!r} -> {contract.get(k, '(none)')!r}"
               for k in {**contract, **fixed} if fixed.get(k) != contract.get(k)]
    if changed:
        raise WorkdirError(
            f"workdir {workdir} is fixed to another architecture, tokenizer, task or row length; this run changes "
            f"{', '.join(changed)}. Nothing was touched. Use a new --workdir, or rerun with the workdir's values "
            f"(in {os.path.join(workdir, CONTRACT)}) to continue it; to reuse the directory on purpose, delete "
            f"its {CHECKPOINTS}/ and {CONTRACT} (and a pretraining workdir's {MODEL_CONFIG}) first"
        )


def write_contract(workdir: str, contract: dict) -> None:
    """Fixes the workdir to `contract` (once: at its first step)."""
    path = os.path.join(workdir, CONTRACT)
    if not os.path.exists(path):
        with open(f"{path}.partial", "w", encoding="utf-8") as f:
            json.dump(contract, f, indent=2, sort_keys=True)
        os.replace(f"{path}.partial", path)


def _has_checkpoints(workdir: str) -> bool:
    directory = os.path.join(workdir, CHECKPOINTS)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))
