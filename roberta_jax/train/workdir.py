"""The files of a workdir, each name defined once.

A pretraining workdir (`train.py --workdir DIR`):

    train_config.json   the resolved config of the last start (process 0)
    model_config.json   the architecture, as HF config.json (process 0, before the first step)
    tokenizer/          the tokenizer trained on the corpus, when `tokenizer.path` is not set
    data_cache/         token ids and packed rows, memory-mapped (`data.cache_dir` moves it)
    checkpoints/        Orbax checkpoints: train state + data-iterator position (every host)
    metrics.jsonl       every step's scalars; TensorBoard events beside it (process 0)
    hf/                 the final model for `transformers` (process 0)

A fine-tuning workdir (`finetune.py --workdir DIR`) holds `finetune_config.json`, `checkpoints/`,
the metrics, `best_hf/` with `best.json` (the best evaluation so far) and `eval_results.json` at the end.

This module imports nothing heavy: the tools that read workdirs use it too.
"""

from __future__ import annotations

import json
import os

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
