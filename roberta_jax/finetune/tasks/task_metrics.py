"""Evaluation metrics of the fine-tuning tasks, in numpy, each defined exactly as its reference computes it.

- classification: accuracy, F1 and Matthews correlation as scikit-learn's `accuracy_score`, `f1_score`
  (binary: positive class 1; more classes: macro over the classes seen in labels or predictions) and
  `matthews_corrcoef`; regression: Pearson and Spearman (average ranks for ties) as scipy's.
- NER: entity-level micro precision/recall/F1 as `seqeval`'s default (conlleval-style) mode, plus tag accuracy.
- QA: exact match and token F1 as the official SQuAD v1.1 `evaluate-v1.1.py`, in percent as it reports them;
  SQuAD v2.0 (no-answer questions, best thresholds) as the official `evaluate-v2.0.py`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np


def _divide(num: float, den: float) -> float:
    """num / den, 0.0 where den is 0 (scikit-learn's and seqeval's default for an undefined score)."""
    return float(num / den) if den else 0.0


# Classification and regression.


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `predictions` [N] equal to `labels` [N]."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray, average: str = "binary") -> float:
    """F1 of integer class ids [N]: "binary" scores class 1; "macro" averages over the classes present in
    `labels` or `predictions` (scikit-learn's `f1_score(labels, predictions, average=...)`)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if average == "binary":
        classes = np.array([1])
    elif average == "macro":
        classes = np.union1d(labels, predictions)
    else:
        raise ValueError(f"average={average!r}; expected 'binary' or 'macro'")
    scores = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        fp_fn = np.sum((predictions == c) != (labels == c))
        scores.append(_divide(2 * tp, 2 * tp + fp_fn))
    return float(np.mean(scores))


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of integer class ids [N], multi-class (Gorodkin's R_K) as scikit-learn's."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    _, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k, n = int(index.max()) + 1, len(labels)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (index[:n], index[n:]), 1)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    cov_tp = np.trace(confusion) * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two [N] arrays (nan if either is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den else float("nan")


def rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of [N] values, ties sharing their average rank (scipy's `rankdata`)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values [start, end) gets the mean of ranks start+1 .. end.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two [N] arrays: Pearson of their average ranks."""
    return pearson(rank(x), rank(y))


# Named entities, as seqeval chunks IOB/IOBES tags in its default mode.


def _tag_and_type(tag: str) -> tuple[str, str]:
    # seqeval: "B-PER" -> ("B", "PER"); "O" -> ("O", "_").
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def entities(sentences: Sequence[Sequence[str]]) -> set[tuple[str, int, int]]:
    """Entity chunks (type, first, last) of tagged sentences, positions counted over the sentences joined
    with one "O" between them, as seqeval's `get_entities`. An I- after O or after another type starts an
    entity (conlleval's rule), so "O I-PER I-PER" holds one PER entity."""
    tags = [t for sentence in sentences for t in (*sentence, "O")]
    chunks, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = _tag_and_type(chunk)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            chunks.add((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exactly matching entities, and tag accuracy, of per-sentence tag
    lists (seqeval's default `precision_score`, `recall_score`, `f1_score`, `accuracy_score`)."""
    if [len(s) for s in gold] != [len(s) for s in predicted]:
        raise ValueError("gold and predicted tags differ in number of sentences or of words in a sentence")
    true, pred = entities(gold), entities(predicted)
    tp = len(true & pred)
    precision, recall = _divide(tp, len(pred)), _divide(tp, len(true))
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in predicted for t in s]
    return {
        "precision": precision,
        "recall": recall,
        "f1": _divide(2 * precision * recall, precision + recall),
        "accuracy": accuracy(np.array(flat_pred, dtype=object), np.array(flat_gold, dtype=object)),
    }


# SQuAD v1.1.


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, the articles a/an/the and extra whitespace (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
    """Harmonic mean of precision and recall of the normalized answers' words (as a multiset)."""
    pred_words, true_words = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(pred_words) & Counter(true_words)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_words), same / len(true_words)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], answers: dict[str, Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's gold answers, averaged over all
    questions of `answers` (id -> gold texts); a question without a prediction scores 0."""
    if not answers:
        raise ValueError("no questions to score")
    em = f1_sum = 0.0
    for qid, truths in answers.items():
        if qid in predictions:
            em += max(squad_exact_match(predictions[qid], t) for t in truths)
            f1_sum += max(squad_f1(predictions[qid], t) for t in truths)
    return {"exact_match": 100.0 * em / len(answers), "f1": 100.0 * f1_sum / len(answers)}


# SQuAD v2.0: unanswerable questions, whose only right answer is "".


def _squad_v2_f1(prediction: str, truth: str) -> float:
    """`squad_f1`, except that an empty answer on either side scores 1 if both are empty, else 0."""
    pred_words, true_words = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred_words or not true_words:
        return float(pred_words == true_words)
    return squad_f1(prediction, truth)


def _best_threshold(predictions, scores, na_probs, has_answer) -> tuple[float, float]:
    """The score in percent and the threshold on `na_probs` that maximize it when every question above the
    threshold is answered "" (the official script's `find_best_thresh`): questions in rising `na_probs`."""
    current = best = sum(not has for has in has_answer.values())
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        current += scores[qid] if has_answer[qid] else (-1 if predictions[qid] else 0)
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), float(threshold)


def squad_v2_scores(
    predictions: dict[str, str], answers: dict[str, Sequence[str]], na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 scores as the official `evaluate-v2.0.py`: `exact`, `f1` (percent) and `total`, the same over
    the answerable (`HasAns_*`) and unanswerable (`NoAns_*`, gold answer "") questions, each prediction
    counted as "" where its `na_probs` exceeds `na_prob_thresh`; with `na_probs` (e.g. `qa.postprocess_v2`'s
    null score diffs) also `best_exact`, `best_f1` and their thresholds. Every question of `answers`
    (id -> gold texts, none for an unanswerable one) needs a prediction."""
    missing = sorted(set(answers) - set(predictions))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} questions, e.g. {missing[:3]}")
    has_answer = {qid: bool(truths) for qid, truths in answers.items()}
    exact, f1_raw = {}, {}
    for qid, truths in answers.items():
        golds = [t for t in truths if normalize_answer(t)] or [""]
        exact[qid] = max(squad_exact_match(predictions[qid], t) for t in golds)
        f1_raw[qid] = max(_squad_v2_f1(predictions[qid], t) for t in golds)
    probs = na_probs if na_probs is not None else dict.fromkeys(answers, 0.0)
    out: dict[str, float] = {}
    for prefix, qids in (("", list(answers)), ("HasAns_", [q for q in answers if has_answer[q]]),
                         ("NoAns_", [q for q in answers if not has_answer[q]])):
        if not qids:
            continue
        null = {q: probs[q] > na_prob_thresh for q in qids}
        out[f"{prefix}exact"] = 100.0 * sum(float(not has_answer[q]) if null[q] else exact[q] for q in qids) / len(qids)
        out[f"{prefix}f1"] = 100.0 * sum(float(not has_answer[q]) if null[q] else f1_raw[q] for q in qids) / len(qids)
        out[f"{prefix}total"] = float(len(qids))
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    return out
