"""Token classification (named entities, CoNLL-2003 style): files -> features -> metrics.

    examples = load_examples("conll2003/train.txt")          # words and IOB2 tags per sentence
    labels = infer_label_list(examples)                       # ["O", "B-LOC", "I-LOC", ...]
    features = featurize(examples, tokenizer, max_length=128, label_list=labels)
    logits = ...                                              # RobertaForTokenClassification, [N, L, len(labels)]
    compute_metrics(logits, features, examples, labels)       # precision, recall, f1, accuracy

Words are encoded pre-split with a prefix space (" EU", " rejects", as inside a sentence) and each word is
labelled on its first sub-word only; the model's prediction there is the word's. Metrics are seqeval's
entity-level scores over all words of each sentence: words cut off by truncation count as predicted "O".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from roberta_jax import storage
from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.finetune.tasks import task_metrics
from roberta_jax.finetune.tasks.classification import config_labels
from roberta_jax.train.objectives import xent_sums

IGNORE_INDEX = -100  # label of sub-words after the first, special and pad tokens: no loss there


@dataclasses.dataclass(frozen=True)
class Example:
    words: tuple[str, ...]
    tags: tuple[str, ...] | None = None
    lines: tuple[int, ...] | None = dataclasses.field(default=None, compare=False)  # each word's line in its file


def load_examples(path: str | os.PathLike, word_column: int = 0, tag_column: int | None = -1) -> list[Example]:
    """Sentences of a CoNLL file (local or `gs://`): one word a line, whitespace-separated columns (the word in
    `word_column`, the tag in `tag_column`; None for an unlabelled file), a blank line between sentences, and
    `-DOCSTART-` lines between documents (skipped)."""
    examples: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def end_sentence() -> None:
        if words:
            examples.append(Example(tuple(words), None if tag_column is None else tuple(tags), tuple(lines)))
        for part in (words, tags, lines):
            part.clear()

    path = os.fspath(path)
    with storage.naming_missing(path), storage.open_file(path, "r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                end_sentence()
                continue
            if tag_column is not None and len(fields) < 2:
                raise ValueError(f"{path}:{line_number}: {line.strip()!r} has no tag column; for an "
                                 "unlabelled file pass tag_column=None")
            words.append(fields[word_column])
            lines.append(line_number)
            if tag_column is not None:
                tags.append(fields[tag_column])
    end_sentence()
    return examples


def infer_label_list(examples: Sequence[Example]) -> list[str]:
    """The distinct tags of `examples`: "O" first, then by entity type, B- before I-. Infer it once from the
    training split and pass the same list for every split."""
    tags = {t for e in examples for t in e.tags or ()}
    return sorted(tags, key=lambda t: (t != "O", t[2:], t))


def featurize(
    examples: Sequence[Example],
    tokenizer: FastTokenizer,
    max_length: int = 128,
    label_list: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Encode each sentence's words as `<s> w1 w2 ... </s>`, truncated and padded to `max_length`.

    Returns int32 arrays [N, max_length]: `input_ids`, `attention_mask`, `word_index` (the word whose first
    sub-word the token is, -1 elsewhere), and, for tagged examples, `labels` (the word's tag index in
    `label_list` on its first sub-word, -100 elsewhere).
    """
    enc = tokenizer(
        [list(e.words) for e in examples],
        is_split_into_words=True,
        add_prefix_space=True,
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_tensors="np",
    )
    word_index = np.full(enc["input_ids"].shape, -1, dtype=np.int32)
    for i in range(len(examples)):
        previous = None
        for j, word in enumerate(enc.word_ids(i)):
            if word is not None and word != previous:
                word_index[i, j] = word
            previous = word
    features = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "word_index": word_index}
    tagged = {e.tags is not None for e in examples}
    if tagged != {True}:
        if tagged == {True, False}:
            raise ValueError("some examples have tags and some do not")
        return features
    if label_list is None:
        raise ValueError("label_list is needed to number the tags: pass label_list=infer_label_list(train_examples)")
    index = {t: k for k, t in enumerate(label_list)}
    unknown = sorted({t for e in examples for t in e.tags} - set(index))
    if unknown:
        raise ValueError(f"tags {unknown} are not in label_list {list(label_list)}")
    labels = np.full(word_index.shape, IGNORE_INDEX, dtype=np.int32)
    rows, cols = np.nonzero(word_index >= 0)
    labels[rows, cols] = [index[examples[i].tags[word_index[i, j]]] for i, j in zip(rows, cols, strict=True)]
    features["labels"] = labels
    return features


def predict_tags(
    logits: np.ndarray, features: dict[str, np.ndarray], examples: Sequence[Example], label_list: Sequence[str]
) -> list[list[str]]:
    """Each sentence's predicted tags, one per word: the argmax of `logits` [N, L, num_labels] (or label ids
    [N, L]) at the word's first sub-word; "O" for words that truncation cut off."""
    logits = np.asarray(logits)
    ids = logits.argmax(axis=-1) if logits.ndim == 3 else logits
    word_index = features["word_index"]
    if ids.shape != word_index.shape or len(examples) != len(ids):
        raise ValueError(
            f"predictions of shape {ids.shape} do not match {len(examples)} examples with features of shape "
            f"{word_index.shape}"
        )
    predicted = [["O"] * len(e.words) for e in examples]
    for i, j in zip(*np.nonzero(word_index >= 0), strict=True):
        predicted[i][word_index[i, j]] = label_list[ids[i, j]]
    return predicted


def compute_metrics(
    logits: np.ndarray, features: dict[str, np.ndarray], examples: Sequence[Example], label_list: Sequence[str]
) -> dict[str, float]:
    """seqeval's entity-level micro `precision`, `recall`, `f1` and the word-level tag `accuracy` of
    `predict_tags` against the examples' tags."""
    predicted = predict_tags(logits, features, examples, label_list)
    return task_metrics.entity_scores([list(e.tags) for e in examples], predicted)


# -- The task protocol (`roberta_jax.finetune.tasks.Task`) ----------------------------------------

ARCHITECTURE = "RobertaForTokenClassification"
TARGETS = ("labels",)


def read_split(config, path: str) -> list[Example]:
    return load_examples(path)


def choose_labels(config, examples: Sequence[Example]) -> list[str]:
    return config_labels(config) or infer_label_list(examples)


def example_labels(config, example: Example) -> tuple[tuple[str, int | None], ...]:
    return tuple(zip(example.tags or (), example.lines or (None,) * len(example.words), strict=True))


def make_features(config, examples: Sequence[Example], tokenizer, labels: list[str]) -> dict[str, np.ndarray]:
    return featurize(examples, tokenizer, max_length=config.data.max_length, label_list=labels)


def head_fields(config, labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels))}


def loss_sums(config, outputs, batch):
    """Cross-entropy over the labelled tokens (the first sub-word of each word; IGNORE_INDEX elsewhere)."""
    labels = batch["labels"]
    valid = labels != IGNORE_INDEX
    loss_sum, count, correct = xent_sums(outputs, jnp.where(valid, labels, 0), valid * batch["weights"][:, None])
    return loss_sum, (count, correct)


def metric_outputs(config, outputs):
    """The predicted label ids int32 [B, L]: a tenth of the logits to bring back to the host."""
    return jnp.argmax(outputs, -1).astype(jnp.int32)


def score(config, outputs, features, examples, labels) -> dict[str, float]:
    return compute_metrics(outputs, features, examples, labels)


def metric_names(config) -> tuple[str, ...]:
    return ("precision", "recall", "f1", "accuracy")


def accuracy_name(config) -> str:
    return "token_accuracy"
