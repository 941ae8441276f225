"""Sentence and sentence-pair classification or regression (GLUE-style): files -> features -> metrics.

    examples = load_examples("sst2/train.tsv")                    # columns found by name: text_a, label
    labels = infer_label_list(examples)                           # ["0", "1"]
    features = featurize(examples, tokenizer, max_length=128, label_list=labels)
    logits = ...                                                  # RobertaForSequenceClassification, [N, 2]
    compute_metrics(logits, features)                             # accuracy, f1, matthews_correlation

Pairs encode as `<s> A </s></s> B </s>`, truncated longest-first. Regression (STS-B) passes
`regression=True`; the model then has num_labels=1 and is scored by Pearson and Spearman correlation.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from roberta_jax import storage
from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.finetune.tasks import task_metrics
from roberta_jax.train.objectives import xent_sums

# Text columns tried in order when none are named: (first text, second text or None), as GLUE's tasks name them.
KNOWN_TEXT_COLUMNS = (
    ("text_a", "text_b"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence", None),
    ("text", None),
)


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None = None
    label: str | None = None  # as written in the file; a number for regression
    line: int | None = dataclasses.field(default=None, compare=False)  # where it starts in its file (not .json)


def read_rows(path: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a table with named columns, by file suffix: `.tsv` (header line, tab-separated, no quoting,
    as GLUE's files), `.csv` (header line, quoted fields), `.jsonl` or `.json` (JSON Lines, or one list).
    `columns` names the columns of a .tsv/.csv without a header line (GLUE's CoLA): its first line is a row."""
    return [row for _, row in read_numbered_rows(path, columns)]


def read_numbered_rows(
    path: str | os.PathLike, columns: Sequence[str] | None = None
) -> list[tuple[int | None, dict[str, Any]]]:
    """`read_rows` with the line of the file each row starts on (None for the rows of a JSON list); `path` is
    local or on `gs://`."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    with storage.naming_missing(path):
        text = storage.read_text(path)
    with io.StringIO(text, newline="") as f:  # as `open(newline="")`: csv sees every line ending as written
        if suffix in (".tsv", ".csv"):
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting)
            header = list(columns) if columns else next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty, expected a header line of column names")
            rows, line_number = [], reader.line_num + 1
            for fields in reader:  # a quoted CSV field may span lines: a row starts after the last one read
                if fields and len(fields) != len(header):
                    raise ValueError(
                        f"{path}:{line_number}: {len(fields)} fields, but the header names {len(header)} columns"
                    )
                if fields:
                    rows.append((line_number, dict(zip(header, fields, strict=True))))
                line_number = reader.line_num + 1
            return rows
        if suffix in (".jsonl", ".json"):
            text = f.read()
            if text.lstrip().startswith("["):
                return [(None, row) for row in json.loads(text)]
            return [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    raise ValueError(f"{path}: unknown format {suffix!r}; expected .tsv, .csv, .jsonl or .json")


def _text_columns(columns: Sequence[str], path: str) -> tuple[str, str | None]:
    for a, b in KNOWN_TEXT_COLUMNS:
        if a in columns:
            return a, b if b in columns else None
    raise ValueError(
        f"{path}: none of the columns {list(columns)} is a known text column "
        f"({[a for a, _ in KNOWN_TEXT_COLUMNS]}); pass text_a=... (and text_b=... for pairs)"
    )


def load_examples(
    path: str | os.PathLike, text_a: str | None = None, text_b: str | None = None, label: str = "label",
    require_label: bool = False, columns: Sequence[str] | None = None,
) -> list[Example]:
    """Examples from a .tsv/.csv/.jsonl/.json table (see `read_rows`). `text_a`/`text_b` name the text
    columns (default: the first of `KNOWN_TEXT_COLUMNS` present); without a `label` column (a test split)
    the examples have no labels, or, with `require_label`, it is a ValueError naming the file and its columns.
    `columns` names the columns of a file without a header line (see `read_rows`).
    Labels are stripped of surrounding whitespace (`"1 "` is `"1"`), as GLUE's readers do. SST-2's
    `label<TAB>text_a` header and GLUE's own columns work as they are."""
    path = os.fspath(path)
    numbered = read_numbered_rows(path, columns)
    if not numbered:
        return []
    columns = list(numbered[0][1])
    if text_a is None:
        text_a, text_b = _text_columns(columns, path)
    for name in (text_a, text_b):
        if name is not None and name not in columns:
            raise ValueError(f"{path}: no column {name!r}; the columns are {columns}")
    has_label = label in columns
    if require_label and not has_label:
        raise ValueError(f"{path} has no label column (columns: {', '.join(columns)}); the labels are read from "
                         f"the column {label!r}: add it, or name the column with --config.data.label_column")
    return [
        Example(
            text_a=str(row[text_a]),
            text_b=None if text_b is None else str(row[text_b]),
            label=str(row[label]).strip() if has_label else None,
            line=line,
        )
        for line, row in numbered
    ]


def infer_label_list(examples: Sequence[Example]) -> list[str]:
    """The distinct labels of `examples`, sorted (numerically if all are integers, so "2" has id 2).
    Infer it once from the training split and pass the same list for every split."""
    labels = {e.label for e in examples if e.label is not None}
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def featurize(
    examples: Sequence[Example],
    tokenizer: FastTokenizer,
    max_length: int = 128,
    label_list: Sequence[str] | None = None,
    regression: bool = False,
) -> dict[str, np.ndarray]:
    """Encode examples as `<s> A </s>` or `<s> A </s></s> B </s>` (longest-first truncation), padded.

    Returns int32 `input_ids` and `attention_mask` [N, max_length], and `labels` [N] when the examples
    are labelled: int32 indices into `label_list`, or float32 values with `regression=True`.
    """
    pairs = {e.text_b is not None for e in examples}
    if len(pairs) > 1:
        raise ValueError("some examples have a second text and some do not; load them with the same columns")
    texts_b = [e.text_b for e in examples] if pairs == {True} else None
    enc = tokenizer(
        [e.text_a for e in examples],
        texts_b,
        truncation="longest_first",
        max_length=max_length,
        padding="max_length",
        return_tensors="np",
    )
    features = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    labels = [e.label for e in examples]
    if any(label is None for label in labels):
        if any(label is not None for label in labels):
            raise ValueError("some examples have labels and some do not")
        return features
    if regression:
        features["labels"] = np.asarray([float(label) for label in labels], dtype=np.float32)
        return features
    if label_list is None:
        raise ValueError(
            "label_list is needed to number the labels: pass label_list=infer_label_list(train_examples), "
            "or regression=True for a numeric target"
        )
    index = {label: i for i, label in enumerate(label_list)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in label_list {list(label_list)}")
    features["labels"] = np.asarray([index[label] for label in labels], dtype=np.int32)
    return features


def compute_metrics(
    logits: np.ndarray, features: dict[str, np.ndarray], examples: Sequence[Example] | None = None
) -> dict[str, float]:
    """Scores of `logits` [N, num_labels] against `features["labels"]` [N].

    num_labels == 1 (regression): `pearson`, `spearman`. Otherwise, on the argmax: `accuracy`, `f1`
    (binary, class 1 positive, for two labels; macro-averaged for more) and `matthews_correlation`.
    `examples` is unused: the labels are in the features (it keeps the signature common to all tasks).
    """
    del examples
    logits = np.asarray(logits)
    labels = features["labels"]
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {labels.shape[0]} labelled features")
    if logits.ndim == 1 or logits.shape[-1] == 1:
        scores = logits.reshape(-1)
        return {"pearson": task_metrics.pearson(scores, labels), "spearman": task_metrics.spearman(scores, labels)}
    predictions = logits.argmax(axis=-1)
    return {
        "accuracy": task_metrics.accuracy(predictions, labels),
        "f1": task_metrics.f1(predictions, labels, average="binary" if logits.shape[-1] == 2 else "macro"),
        "matthews_correlation": task_metrics.matthews_corrcoef(predictions, labels),
    }


# -- The task protocol (`roberta_jax.finetune.tasks.Task`) ----------------------------------------

ARCHITECTURE = "RobertaForSequenceClassification"
TARGETS = ("labels",)


def read_split(config, path: str) -> list[Example]:
    """The examples of a fine-tuning file: labelled, both the training and the eval file."""
    d = config.data
    columns = [c.strip() for c in d.columns.split(",")] if d.columns else None
    return load_examples(path, text_a=d.text_a or None, text_b=d.text_b or None, label=d.label_column,
                         require_label=True, columns=columns)


def config_labels(config) -> list[str]:
    """`config.data.labels`, comma-separated, as a list ([] when unset)."""
    return [s.strip() for s in config.data.labels.split(",")] if config.data.labels else []


def choose_labels(config, examples: Sequence[Example]) -> list[str] | None:
    if config.data.regression:
        return None
    return config_labels(config) or infer_label_list(examples)


def example_labels(config, example: Example) -> tuple[tuple[str, int | None], ...]:
    return () if config.data.regression or example.label is None else ((example.label, example.line),)


def make_features(config, examples: Sequence[Example], tokenizer, labels: list[str] | None) -> dict[str, np.ndarray]:
    return featurize(examples, tokenizer, max_length=config.data.max_length, label_list=labels,
                     regression=config.data.regression)


def head_fields(config, labels: list[str] | None) -> dict[str, Any]:
    if config.data.regression:
        return {"id2label": {0: "LABEL_0"}, "problem_type": "regression"}
    return {"id2label": dict(enumerate(labels)), "problem_type": "single_label_classification"}


def loss_sums(config, outputs, batch):
    """Cross-entropy over examples; regression: the squared error, "correct" within 0.5 of the target."""
    w = batch["weights"]
    if config.data.regression:
        error = outputs[:, 0] - batch["labels"]
        return jnp.sum(w * error**2), (jnp.sum(w), jnp.sum(w * (jnp.abs(error) < 0.5)))
    loss_sum, count, correct = xent_sums(outputs, batch["labels"], w)
    return loss_sum, (count, correct)


def metric_outputs(config, outputs):
    return outputs


def score(config, outputs, features, examples, labels) -> dict[str, float]:
    return compute_metrics(outputs, features, examples)


def metric_names(config) -> tuple[str, ...]:
    return ("pearson", "spearman") if config.data.regression else ("accuracy", "f1", "matthews_correlation")


def accuracy_name(config) -> str:
    return "within_0.5" if config.data.regression else "accuracy"
