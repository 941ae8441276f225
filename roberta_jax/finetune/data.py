"""A fine-tuning task's data: both splits read and featurized by the task module, and resumable batches.

    task = tasks.get_task(config.task)
    data = load_task_data(config, tokenizer, task)          # examples, features and labels of both splits
    batches = FeatureBatches(data.arrays("train"), global_batch_size=32, seed=0)

Every batch carries `weights` float32 [B]: 1 for an example, 0 for a row that only fills an evaluation
batch to its static shape; the tasks' losses and counts are weighted by it, so padding rows change nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from roberta_jax.data.batches import RowBatches
from roberta_jax.finetune.tasks import Task


@dataclasses.dataclass
class TaskData:
    """Both splits of a task: examples (for metrics) and their features (numpy, one row per input)."""

    train_examples: list
    train_features: dict[str, np.ndarray]
    eval_examples: list
    eval_features: dict[str, np.ndarray]
    labels: list[str] | None  # the label names (classification, ner); None for regression, qa, multiple choice
    model_arrays: tuple[str, ...]  # the feature keys a step reads
    # `data.extra_eval_files`: name -> (examples, features), scored beside the eval file.
    extra_evals: dict[str, tuple[list, dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        features = self.train_features if split == "train" else self.eval_features
        return {k: features[k] for k in self.model_arrays}

    def eval_sets(self) -> list[tuple[str, list, dict[str, np.ndarray]]]:
        """(metric prefix, examples, features) of every eval set: the eval file's ("") then each extra's ("name/")."""
        extra = [(f"{name}/", examples, features) for name, (examples, features) in self.extra_evals.items()]
        return [("", self.eval_examples, self.eval_features), *extra]


def extra_eval_files(config) -> dict[str, str]:
    """`config.data.extra_eval_files` ("name=path,name=path") as {name: path}; a malformed entry is a ValueError."""
    files = {}
    for entry in filter(None, (e.strip() for e in config.data.extra_eval_files.split(","))):
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip() or "/" in name:
            raise ValueError(f"data.extra_eval_files: {entry!r} is not NAME=PATH (a name without '/')")
        files[name.strip()] = path.strip()
    return files


def check_labels(config, task: Task, examples: Sequence, labels: list[str] | None) -> None:
    """Raises ValueError at the first label of the eval file the model has no output for, naming the file, the
    line (the example's number where the format has no lines) and the label."""
    for number, example in enumerate(examples, start=1):
        for label, line in task.example_labels(config, example):
            if label in (labels or ()):
                continue
            where = f":{line}" if line is not None else f": example {number}"
            source = "--config.data.labels" if config.data.labels else f"the training file {config.data.train_file}"
            raise ValueError(
                f"{config.data.eval_file}{where}: label {label!r} is not one of the labels of {source} ({labels}); "
                "add it to the training data or list every label in --config.data.labels")


def load_task_data(config, tokenizer, task: Task) -> TaskData:
    """Reads, subsets and featurizes `config.data.train_file` and `eval_file` with `task`'s functions."""
    d = config.data
    train, dev = task.read_split(config, d.train_file), task.read_split(config, d.eval_file)
    # The labels are the training set's (or the config's list), before any subset: the head is trained on them.
    labels = task.choose_labels(config, train)
    if d.max_train_examples and d.max_train_examples < len(train):
        keep = np.random.default_rng(config.seed).choice(len(train), d.max_train_examples, replace=False)
        train = [train[i] for i in sorted(keep)]
    if d.max_eval_examples:
        dev = dev[: d.max_eval_examples]
    if not train or not dev:
        raise ValueError(f"{d.train_file if not train else d.eval_file} holds no examples")
    check_labels(config, task, dev, labels)
    train_features, dev_features = (task.make_features(config, e, tokenizer, labels) for e in (train, dev))
    arrays = ("input_ids", "attention_mask", *task.TARGETS)
    extra = {}
    for name, path in extra_eval_files(config).items():
        examples = task.read_split(config, path)
        if not examples:
            raise ValueError(f"{path} (data.extra_eval_files {name}) holds no examples")
        check_labels(_with_eval_file(config, path), task, examples, labels)
        extra[name] = (examples, task.make_features(config, examples, tokenizer, labels))
    named = [("train", d.train_file, train_features), ("eval", d.eval_file, dev_features)]
    for name, path, features in named + [(n, p, extra[n][1]) for n, p in extra_eval_files(config).items()]:
        missing = [k for k in arrays if k not in features]
        if missing:
            raise ValueError(f"{path} ({name}) has no labels ({missing}); fine-tuning needs labelled files")
    return TaskData(train, train_features, dev, dev_features, labels, arrays, extra)


def _with_eval_file(config, path: str):
    """`config` with `data.eval_file` = `path`, so that `check_labels` names the file it checks."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.eval_file = path
    return config


class FeatureBatches(RowBatches):
    """Host-local batches of rows of equal-length feature arrays, plus `weights` float32 [B_local]; resumable.

    The batching rules (epoch order, host shares, state) are `data.batches.RowBatches`'s, whose keyword
    arguments these are. An incomplete final batch is dropped (`drop_remainder`, training) or filled
    with copies of a real row of weight 0 (evaluation: a copy keeps every row a valid input).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, **kwargs):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"feature arrays of different lengths {sorted(sizes)}")
        super().__init__(sizes.pop(), global_batch_size, **kwargs)
        self.arrays = dict(arrays)

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.zeros(self.local_batch_size, np.float32)
        weights[: len(indices)] = 1.0
        filler = indices[-1] if len(indices) else self._epoch_order(self.epoch)[-1]
        indices = np.concatenate([indices, np.full(self.local_batch_size - len(indices), filler, indices.dtype)])
        return {**{k: v[indices] for k, v in self.arrays.items()}, "weights": weights}


def gather_rows(outputs: Sequence[Any], num_rows: int):
    """Per-batch outputs (arrays, or tuples of arrays for qa) -> the first `num_rows` rows, concatenated."""
    if isinstance(outputs[0], (tuple, list)):
        return tuple(np.concatenate(parts)[:num_rows] for parts in zip(*outputs))
    return np.concatenate(outputs)[:num_rows]
