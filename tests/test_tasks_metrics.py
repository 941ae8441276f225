"""Task metrics against their references: scikit-learn, scipy, seqeval and the official SQuAD v1.1 script."""

import json
import re
import string
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from roberta_jax.finetune.tasks import task_metrics

# Reference: the official SQuAD v1.1 evaluation script (https://rajpurkar.github.io/SQuAD-explorer/,
# "evaluate-v1.1.py"), functions copied verbatim.


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    message = 'Unanswered question ' + qa['id'] + \
                              ' will receive score 0.'
                    print(message, file=sys.stderr)
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))  # noqa: C417
                prediction = predictions[qa['id']]
                exact_match += metric_max_over_ground_truths(
                    exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(
                    f1_score, prediction, ground_truths)

    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total

    return {'exact_match': exact_match, 'f1': f1}

# End of the official script's functions.


ANSWERS = [
    "Denver Broncos", "the Denver Broncos!", "Broncos Denver", "An apple, a day", "THE  end.", "a", "", "   ",
    "Levi's Stadium", "Levis Stadium", "24–10", "24-10", "l'Été", "Super Bowl L", "another anthem", "the the the",
    "\"golden anniversary\"", "golden anniversary gold", "Zürich (ZH)", "thea", "b a c", "c a b c",
]


def test_squad_normalize_em_f1_match_official_script():
    for a in ANSWERS:
        assert task_metrics.normalize_answer(a) == normalize_answer(a), a
        for b in ANSWERS:
            assert task_metrics.squad_exact_match(a, b) == float(exact_match_score(a, b)), (a, b)
            assert task_metrics.squad_f1(a, b) == pytest.approx(f1_score(a, b), abs=1e-12), (a, b)


def test_squad_scores_match_official_evaluate():
    rng = np.random.default_rng(0)
    qas = [
        {"id": f"q{i}", "answers": [{"text": t} for t in rng.choice(ANSWERS, size=rng.integers(1, 4))]}
        for i in range(40)
    ]
    dataset = [{"paragraphs": [{"qas": qas[:25]}, {"qas": qas[25:]}]}]
    predictions = {q["id"]: str(rng.choice(ANSWERS)) for q in qas[:-3]}  # the last 3 unanswered: 0
    ours = task_metrics.squad_scores(predictions, {q["id"]: [a["text"] for a in q["answers"]] for q in qas})
    reference = evaluate(dataset, predictions)
    assert ours == pytest.approx(reference, abs=1e-9)
    assert 0 < ours["exact_match"] < ours["f1"] < 100


def _label_pairs():
    """(predictions, labels) of fixed class ids: binary, 3 classes, a class that never occurs, degenerate."""
    rng = np.random.default_rng(1)
    labels3 = rng.integers(0, 3, 200)
    noisy3 = np.where(rng.random(200) < 0.6, labels3, rng.integers(0, 3, 200))
    labels2 = rng.integers(0, 2, 101)
    return [
        (np.where(rng.random(101) < 0.7, labels2, 1 - labels2), labels2),
        (noisy3, labels3),
        (np.where(noisy3 == 1, 3, noisy3), np.where(labels3 == 1, 3, labels3)),  # classes {0, 2, 3}
        (np.zeros(50, int), rng.integers(0, 2, 50)),  # constant prediction: MCC 0, binary F1 0
        (np.array([0, 0, 0]), np.array([0, 0, 0])),  # no positives at all
        (np.array([1, 0, 1, 1]), np.array([1, 0, 1, 1])),
    ]


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_classification_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    for predictions, labels in _label_pairs():
        assert task_metrics.accuracy(predictions, labels) == pytest.approx(sk.accuracy_score(labels, predictions))
        mcc = sk.matthews_corrcoef(labels, predictions)
        assert task_metrics.matthews_corrcoef(predictions, labels) == pytest.approx(mcc)
        assert task_metrics.f1(predictions, labels, "macro") == pytest.approx(
            sk.f1_score(labels, predictions, average="macro", zero_division=0)
        )
        if set(np.unique(np.r_[labels, predictions])) <= {0, 1}:
            reference = sk.f1_score(labels, predictions, zero_division=0)
            assert task_metrics.f1(predictions, labels) == pytest.approx(reference)


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    cases = [
        (x, 0.5 * x + rng.normal(size=300)),
        (rng.integers(0, 6, 300).astype(float), rng.integers(0, 6, 300) + 0.1 * x),  # many ties
        (np.round(x, 1), -np.round(x, 1) ** 3),
        (np.array([1.0, 2.0, 2.0, 2.0, 5.0]), np.array([0.3, 0.3, 0.1, 0.9, 0.9])),
    ]
    for a, b in cases:
        assert task_metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
        assert task_metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
        np.testing.assert_array_equal(task_metrics.rank(a), stats.rankdata(a))


TRICKY_TAGS = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["I-PER", "I-PER", "O", "I-LOC", "B-LOC"],  # I- without B- starts an entity
    ["B-PER", "I-LOC", "I-LOC", "O"],  # type change inside a chunk
    ["B-ORG", "B-ORG", "I-ORG", "I-PER", "B-PER"],
    ["O", "O", "O"],
    ["I-MISC"],
    ["B-PER"],
    ["S-LOC", "B-PER", "E-PER", "I-PER", "E-ORG", "O", "E-LOC", "I-LOC"],  # IOBES tags, mixed in
    ["B-LOC", "O", "I-LOC", "I-LOC", "B-LOC", "I-LOC"],
]


def _random_tags(rng, n, types=("PER", "LOC", "ORG")):
    tags = ["O"] + [f"{p}-{t}" for p in "BI" for t in types]
    return [list(rng.choice(tags, size=rng.integers(1, 12), p=[0.4] + [0.1] * 6)) for _ in range(n)]


def test_entities_match_seqeval_get_entities():
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    sentences = TRICKY_TAGS + _random_tags(np.random.default_rng(3), 30)
    assert task_metrics.entities(sentences) == set(seqeval.get_entities(sentences))
    for sentence in sentences:
        assert task_metrics.entities([sentence]) == set(seqeval.get_entities(sentence))


def test_entity_scores_match_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(4)
    gold = TRICKY_TAGS + _random_tags(rng, 60)
    for noise in (0.0, 0.1, 0.5, 1.0):
        predicted = [
            [t if rng.random() >= noise else str(rng.choice(["O", "B-PER", "I-PER", "I-LOC", "B-ORG"])) for t in s]
            for s in gold
        ]
        ours = task_metrics.entity_scores(gold, predicted)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, predicted))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
        assert ours["accuracy"] == pytest.approx(seqeval.accuracy_score(gold, predicted))
    all_o = [["O"] * len(s) for s in gold]
    nothing = {"precision": 0, "recall": 0, "f1": 0, "accuracy": 0}
    assert task_metrics.entity_scores(gold, all_o) | {"accuracy": 0} == nothing


def test_entity_scores_exact_values():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["I-ORG", "O"]]  # PER and ORG found, LOC missed
    scores = task_metrics.entity_scores(gold, predicted)
    assert scores == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "accuracy": 4 / 6})
    with pytest.raises(ValueError, match="differ"):
        task_metrics.entity_scores(gold, predicted[:1])


def _v2_dataset():
    path = Path(__file__).parent / "data" / "tasks" / "squad_v2.json"
    return json.loads(path.read_text())["data"]


def test_squad_v2_scores_match_official_evaluate_v2():
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    try:
        import squad_v2_official as official
    finally:
        sys.path.pop(0)
    dataset = _v2_dataset()
    questions = [(qa, p["context"]) for a in dataset for p in a["paragraphs"] for qa in p["qas"]]
    answers = {qa["id"]: [a["text"] for a in qa["answers"]] for qa, _ in questions}
    assert sum(not a for a in answers.values()) == 3
    rng = np.random.default_rng(5)
    for trial in range(30):
        # Each question answered "", with its gold (or plausible) text, or with a random slice of its context.
        predictions = {}
        for qa, context in questions:
            gold = [a["text"] for a in qa["answers"] + qa.get("plausible_answers", [])] or ["seals"]
            start = int(rng.integers(0, len(context) - 20))
            predictions[qa["id"]] = [" ", gold[0], context[start:start + int(rng.integers(1, 20))]][rng.integers(3)]
        na_probs = {qid: float(rng.choice([rng.normal(), 0.5])) for qid in answers}  # ties in the ranking too
        thresh = [1.0, 0.0, 0.5][trial % 3]
        ours = task_metrics.squad_v2_scores(predictions, answers, na_probs, na_prob_thresh=thresh)
        reference = official.evaluate(dataset, predictions, na_probs, na_prob_thresh=thresh)
        assert ours == pytest.approx(dict(reference)), trial
        without = official.evaluate(dataset, predictions)
        assert task_metrics.squad_v2_scores(predictions, answers) == pytest.approx(dict(without))


def test_squad_v2_scores_exact_values():
    answers = {"a": ["Denver Broncos"], "b": [], "c": ["1871", "in 1871"]}
    predictions = {"a": "the Broncos", "b": "", "c": "in 1871"}
    scores = task_metrics.squad_v2_scores(predictions, answers, {"a": 0.2, "b": 0.9, "c": -1.0})
    assert scores["exact"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(100 * (2 / 3 + 2) / 3)
    assert scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 100.0 and scores["NoAns_total"] == 1.0
    # The best threshold answers "a" (diff 0.2, F1 2/3); "b" above it, already "", adds nothing: it stays 0.2.
    assert scores["best_f1"] == pytest.approx(scores["f1"]) and scores["best_f1_thresh"] == 0.2
    with pytest.raises(ValueError, match="no prediction for 1 questions"):
        task_metrics.squad_v2_scores({"a": ""}, {"a": [], "b": []})
