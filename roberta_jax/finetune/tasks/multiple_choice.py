"""Multiple choice (SWAG style): files -> features [N, choices, L] -> accuracy.

    examples = load_examples("swag/val.csv")               # sent1, sent2, ending0..ending3, label
    features = featurize(examples, tokenizer, max_length=128)
    logits = ...                                            # RobertaForMultipleChoice, [N, choices]
    compute_metrics(logits, features)                       # accuracy

Each choice encodes as the pair `<s> context </s></s> question ending </s>`: SWAG's `sent2` is the start of
the sentence every ending completes, so it is written before each ending (HF `run_swag.py`'s layout).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from itertools import count, takewhile
from typing import Any

import numpy as np

from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.finetune.tasks import task_metrics
from roberta_jax.finetune.tasks.classification import read_rows
from roberta_jax.train.objectives import xent_sums


@dataclasses.dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    question: str = ""  # written before every ending
    label: int | None = None  # index of the right ending


def load_examples(
    path: str | os.PathLike,
    context: str = "sent1",
    question: str | None = "sent2",
    endings: str = "ending",
    label: str = "label",
) -> list[Example]:
    """Examples from a .csv/.tsv/.jsonl/.json table (see `classification.read_rows`) with columns `context`,
    `question` (None: no such column), `endings` followed by 0, 1, ... (`ending0`, `ending1`, ...; or one
    column `endings` holding a list, in JSON) and `label` (absent in a test split)."""
    path = os.fspath(path)
    rows = read_rows(path)
    if not rows:
        return []
    columns = list(rows[0])
    ending_columns = list(takewhile(lambda c: c in columns, (f"{endings}{i}" for i in count())))
    for name in (context, question):
        if name is not None and name not in columns:
            raise ValueError(f"{path}: no column {name!r}; the columns are {columns}")
    if endings not in columns and not ending_columns:
        raise ValueError(f"{path}: no column {endings!r} nor {endings}0, {endings}1, ...; the columns are {columns}")
    examples = []
    for row in rows:
        choices = row[endings] if endings in columns else [row[c] for c in ending_columns]
        has_label = label in row and row[label] not in ("", None)
        examples.append(
            Example(
                context=str(row[context]),
                endings=tuple(str(c) for c in choices),
                question="" if question is None else str(row[question]),
                label=int(row[label]) if has_label else None,
            )
        )
    return examples


def featurize(
    examples: Sequence[Example], tokenizer: FastTokenizer, max_length: int = 128
) -> dict[str, np.ndarray]:
    """Encode every (context, question + ending) pair, longest-first truncated and padded to `max_length`.

    Returns int32 `input_ids` and `attention_mask` [N, choices, max_length], and `labels` [N] (the right
    ending's index) when every example has a label.
    """
    choices = {len(e.endings) for e in examples}
    if len(choices) > 1:
        raise ValueError(f"examples have different numbers of endings {sorted(choices)}; batches need one number")
    num_choices = choices.pop() if choices else 0
    firsts = [e.context for e in examples for _ in e.endings]
    seconds = [f"{e.question} {ending}" if e.question else ending for e in examples for ending in e.endings]
    enc = tokenizer(
        firsts, seconds, truncation="longest_first", max_length=max_length, padding="max_length", return_tensors="np"
    )
    shape = (len(examples), num_choices, max_length)
    features = {"input_ids": enc["input_ids"].reshape(shape), "attention_mask": enc["attention_mask"].reshape(shape)}
    labels = [e.label for e in examples]
    if any(label is None for label in labels):
        if any(label is not None for label in labels):
            raise ValueError("some examples have labels and some do not")
    elif labels:
        bad = [label for label in labels if not 0 <= label < num_choices]
        if bad:
            raise ValueError(f"labels {sorted(set(bad))} are not indices of {num_choices} endings")
        features["labels"] = np.asarray(labels, dtype=np.int32)
    return features


def compute_metrics(
    logits: np.ndarray, features: dict[str, np.ndarray], examples: Sequence[Example] | None = None
) -> dict[str, float]:
    """`accuracy` of the argmax of `logits` [N, choices] against `features["labels"]` [N]; `examples` is
    unused (the signature is common to all tasks)."""
    del examples
    logits, labels = np.asarray(logits), features["labels"]
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {labels.shape[0]} labelled features")
    return {"accuracy": task_metrics.accuracy(logits.argmax(axis=-1), labels)}


# -- The task protocol (`roberta_jax.finetune.tasks.Task`) ----------------------------------------

ARCHITECTURE = "RobertaForMultipleChoice"
TARGETS = ("labels",)


def read_split(config, path: str) -> list[Example]:
    return load_examples(path)


def choose_labels(config, examples: Sequence[Example]) -> None:
    return None  # the choices are numbered; there are no label names


def example_labels(config, example: Example) -> tuple[tuple[str, int | None], ...]:
    return ()  # the answer is a choice's number, not a label name


def make_features(config, examples: Sequence[Example], tokenizer, labels: None) -> dict[str, np.ndarray]:
    return featurize(examples, tokenizer, max_length=config.data.max_length)


def head_fields(config, labels: None) -> dict[str, Any]:
    return {}


def loss_sums(config, outputs, batch):
    """Cross-entropy over the choices of each example."""
    loss_sum, count, correct = xent_sums(outputs, batch["labels"], batch["weights"])
    return loss_sum, (count, correct)


def metric_outputs(config, outputs):
    return outputs


def score(config, outputs, features, examples, labels) -> dict[str, float]:
    return compute_metrics(outputs, features, examples)


def metric_names(config) -> tuple[str, ...]:
    return ("accuracy",)


def accuracy_name(config) -> str:
    return "accuracy"
