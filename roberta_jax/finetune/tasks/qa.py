"""Extractive question answering (SQuAD v1.1 and v2.0): files -> features -> answer spans -> EM / F1.

    examples = load_examples("squad/dev-v1.1.json")
    features = featurize(examples, tokenizer, max_length=384, doc_stride=128)   # one row per context window
    start_logits, end_logits = ...                             # RobertaForQuestionAnswering, [F, L] each
    compute_metrics((start_logits, end_logits), features, examples)             # exact_match, f1 (percent)

A question and its context encode as `<s> question </s></s> context </s>`; a context too long for one row is
cut into windows that share `doc_stride` tokens, each a feature of its own (HF `run_qa.py`'s scheme). A
window that does not hold the whole answer is labelled with index 0 (`<s>`). `postprocess` picks each
example's best span over all its windows; `postprocess_v2` (SQuAD v2.0, `data.version_2_with_negative`)
answers "" where `<s>`'s null score beats that span by more than `null_score_diff_threshold`.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()  # gold answer texts; the first one is the training target
    answer_starts: tuple[int, ...] = ()  # character offset of each answer in the context


def load_examples(path: str | os.PathLike) -> list[Example]:
    """The questions of a SQuAD v1.1 or v2.0 JSON file (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`),
    local or on `gs://`; an unanswerable v2.0 question has no answers."""
    path = os.fspath(path)
    with storage.naming_missing(path):
        data = json.loads(storage.read_text(path))
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: not SQuAD JSON, expected an object with a 'data' list of articles")
    return [
        Example(
            id=qa["id"],
            question=qa["question"],
            context=paragraph["context"],
            answers=tuple(a["text"] for a in qa.get("answers", ())),
            answer_starts=tuple(a["answer_start"] for a in qa.get("answers", ())),
        )
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def _answer_tokens(offsets: np.ndarray, is_context: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last token of the characters [start_char, end_char) in one window; (0, 0) if the window's
    context does not hold them all."""
    context = np.flatnonzero(is_context)
    first, last = context[0], context[-1]
    if not (offsets[first, 0] <= start_char and offsets[last, 1] >= end_char):
        return 0, 0
    starts, ends = offsets[first : last + 1, 0], offsets[first : last + 1, 1]
    start = first + np.flatnonzero(starts <= start_char)[-1]  # the token holding the answer's first character
    end = first + np.flatnonzero(ends >= end_char)[0]  # the token holding its last
    return int(start), int(end)


def featurize(
    examples: Sequence[Example], tokenizer: FastTokenizer, max_length: int = 384, doc_stride: int = 128
) -> dict[str, np.ndarray]:
    """Encode question/context pairs, the context truncated to windows sharing `doc_stride` tokens.

    Returns int32 arrays with one row per window (F >= len(examples)): `input_ids`, `attention_mask`
    [F, max_length]; `offset_mapping` [F, max_length, 2], the character span of each context token in its
    example's context (-1 for question, special and pad tokens); `example_index` [F], the example of each
    window; and, when examples have answers, `start_positions`, `end_positions` [F]: the tokens of the
    first answer's first and last characters, both 0 where the window does not hold it (or there is none).
    """
    questions = [e.question.lstrip() for e in examples]  # leading spaces only take room from the context
    longest = max((len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]), default=0)
    room = max_length - longest - 4  # context tokens per window beside <s> question </s></s> ... </s>
    if room <= doc_stride:
        raise ValueError(
            f"the longest question has {longest} tokens, leaving {room} of max_length={max_length} for context, "
            f"which must exceed doc_stride={doc_stride}: raise max_length or lower doc_stride"
        )
    enc = tokenizer(
        questions,
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
        return_tensors="np",
    )
    example_index = enc["overflow_to_sample_mapping"]
    is_context = np.array([[s == 1 for s in enc.sequence_ids(f)] for f in range(len(example_index))], dtype=bool)
    offsets = np.where(is_context[..., None], enc["offset_mapping"], -1).astype(np.int32)
    features = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "offset_mapping": offsets,
        "example_index": example_index,
    }
    if any(e.answers for e in examples):
        spans = np.zeros((len(example_index), 2), dtype=np.int32)  # unanswerable: (0, 0), as SQuAD v2 is trained
        for f, i in enumerate(example_index):
            if examples[i].answers:
                start_char = examples[i].answer_starts[0]
                end_char = start_char + len(examples[i].answers[0])
                spans[f] = _answer_tokens(offsets[f], is_context[f], start_char, end_char)
        features["start_positions"], features["end_positions"] = spans[:, 0].copy(), spans[:, 1].copy()
    return features


def postprocess(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: dict[str, np.ndarray],
    examples: Sequence[Example],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Each example's answer text (id -> text): of the spans pairing one of the `n_best` highest start and
    end logits [F, L] of a window, inside the context, end >= start and at most `max_answer_length` tokens,
    the one with the highest start + end logit over all of the example's windows ("" if there is none)."""
    best = _best_spans(start_logits, end_logits, features, n_best, max_answer_length)
    answers = {}
    for i, example in enumerate(examples):
        _, first, end = best.get(i, (0.0, 0, 0))
        answers[example.id] = example.context[first:end]
    return answers


def postprocess_v2(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: dict[str, np.ndarray],
    examples: Sequence[Example],
    n_best: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """SQuAD v2.0 answers: (id -> text, id -> null score diff). The null score of an example is the lowest
    start + end logit of `<s>` (index 0) over its windows; the diff is that minus the best span's score
    (`postprocess`'s), and the answer is "" (no answer) where the diff exceeds `null_score_diff_threshold`,
    as HF's `run_qa.py` and the original BERT scripts decide. The diffs are the `na_probs` of
    `task_metrics.squad_v2_scores`, which finds the threshold that would have been best."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    best = _best_spans(start_logits, end_logits, features, n_best, max_answer_length)
    null = start_logits[:, 0] + end_logits[:, 0]
    answers, diffs = {}, {}
    for i, example in enumerate(examples):
        null_score = float(null[features["example_index"] == i].min())
        if i not in best:  # no valid span in any window: the null answer, whatever the threshold
            answers[example.id], diffs[example.id] = "", float("inf")
            continue
        score, first, end = best[i]
        diffs[example.id] = null_score - score
        answers[example.id] = "" if diffs[example.id] > null_score_diff_threshold else example.context[first:end]
    return answers, diffs


def _best_spans(start_logits, end_logits, features, n_best: int, max_answer_length: int):
    """{example index: (score, first char, end char)} of each example's best valid span (see `postprocess`);
    an example without one is absent."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    offsets, example_index = features["offset_mapping"], features["example_index"]
    if start_logits.shape != offsets.shape[:2] or end_logits.shape != offsets.shape[:2]:
        raise ValueError(
            f"start/end logits of shapes {start_logits.shape}, {end_logits.shape} do not match the "
            f"features' {offsets.shape[:2]}"
        )
    best: dict[int, tuple[float, int, int]] = {}  # example -> (score, first char, end char)
    for f, i in enumerate(example_index):
        # Ranked as HF's run_qa ranks them, so that ties break the same way.
        starts = np.argsort(start_logits[f])[-1 : -n_best - 1 : -1]
        ends = np.argsort(end_logits[f])[-1 : -n_best - 1 : -1]
        length = ends[None, :] - starts[:, None] + 1
        valid = (offsets[f, starts, 0] >= 0)[:, None] & (offsets[f, ends, 0] >= 0)[None, :]
        valid &= (length >= 1) & (length <= max_answer_length)
        if not valid.any():
            continue
        scores = np.where(valid, start_logits[f, starts][:, None] + end_logits[f, ends][None, :], -np.inf)
        s, e = np.unravel_index(np.argmax(scores), scores.shape)
        if int(i) not in best or scores[s, e] > best[int(i)][0]:
            best[int(i)] = (float(scores[s, e]), int(offsets[f, starts[s], 0]), int(offsets[f, ends[e], 1]))
    return best


def compute_metrics(
    outputs: tuple[np.ndarray, np.ndarray],
    features: dict[str, np.ndarray],
    examples: Sequence[Example],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, float]:
    """`exact_match` and `f1` in percent, as the official SQuAD v1.1 script, of `postprocess`'s answers from
    the model's `(start_logits, end_logits)` [F, L] each."""
    if not all(e.answers for e in examples):
        raise ValueError("every example needs gold answers to be scored")
    start_logits, end_logits = outputs
    predictions = postprocess(start_logits, end_logits, features, examples, n_best, max_answer_length)
    return task_metrics.squad_scores(predictions, {e.id: e.answers for e in examples})


# -- The task protocol (`roberta_jax.finetune.tasks.Task`) ----------------------------------------

ARCHITECTURE = "RobertaForQuestionAnswering"
TARGETS = ("start_positions", "end_positions")


def read_split(config, path: str) -> list[Example]:
    return load_examples(path)


def choose_labels(config, examples: Sequence[Example]) -> None:
    return None


def example_labels(config, example: Example) -> tuple[tuple[str, int | None], ...]:
    return ()  # answers are spans of the context


def make_features(config, examples: Sequence[Example], tokenizer, labels: None) -> dict[str, np.ndarray]:
    return featurize(examples, tokenizer, max_length=config.data.max_length, doc_stride=config.data.doc_stride)


def head_fields(config, labels: None) -> dict[str, Any]:
    return {"num_labels": 2}


def loss_sums(config, outputs, batch):
    """The mean of the start and end cross-entropies (as `transformers`); "correct": both ends right."""
    start, end = outputs
    w = batch["weights"]
    s_sum, count, _ = xent_sums(start, batch["start_positions"], w)
    e_sum, _, _ = xent_sums(end, batch["end_positions"], w)
    both = (jnp.argmax(start, -1) == batch["start_positions"]) & (jnp.argmax(end, -1) == batch["end_positions"])
    return (s_sum + e_sum) / 2, (count, jnp.sum(both * w))


def metric_outputs(config, outputs):
    return outputs


# SQuAD v2.0's scores (`task_metrics.squad_v2_scores`) under this task's metric names.
V2_METRICS = {"exact": "exact_match", "f1": "f1", "HasAns_exact": "has_ans_exact", "HasAns_f1": "has_ans_f1",
              "NoAns_exact": "no_ans_exact", "NoAns_f1": "no_ans_f1", "best_exact": "best_exact",
              "best_f1": "best_f1", "best_f1_thresh": "best_f1_thresh"}


def score(config, outputs, features, examples, labels) -> dict[str, float]:
    if not config.data.version_2_with_negative:
        return compute_metrics(outputs, features, examples, n_best=config.n_best,
                               max_answer_length=config.max_answer_length)
    answers, diffs = postprocess_v2(*outputs, features, examples, config.n_best, config.max_answer_length,
                                    config.null_score_diff_threshold)
    scores = task_metrics.squad_v2_scores(answers, {e.id: e.answers for e in examples}, diffs)
    return {name: scores.get(key, 0.0) for key, name in V2_METRICS.items()}


def metric_names(config) -> tuple[str, ...]:
    return tuple(V2_METRICS.values()) if config.data.version_2_with_negative else ("exact_match", "f1")


def accuracy_name(config) -> str:
    return "span_accuracy"
