"""Extractive QA: SQuAD loader, doc-stride windows equal to HF's, answer tokens, span decoding, EM / F1."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from roberta_jax.finetune.tasks import qa, task_metrics

DATA = Path(__file__).parent / "data"
SQUAD = DATA / "tasks" / "squad.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_LENGTH, STRIDE = 64, 16  # small windows: the 775-character paragraph needs several


@pytest.fixture(scope="module")
def examples():
    return qa.load_examples(SQUAD)


@pytest.fixture(scope="module")
def features(tok, examples):
    return qa.featurize(examples, tok, max_length=MAX_LENGTH, doc_stride=STRIDE)


def _gold_logits(features):
    """Start/end logits [F, L] peaked at each window's labelled start and end tokens."""
    start = np.zeros(features["input_ids"].shape)
    end = np.zeros(features["input_ids"].shape)
    rows = np.arange(len(start))
    start[rows, features["start_positions"]] = 10.0
    end[rows, features["end_positions"]] = 10.0
    return start, end


def test_load_squad(examples):
    assert len(examples) == 8
    first = examples[0]
    assert first.id == "56be4db0acb8001400a502ec"
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers == ("Denver Broncos",) * 3 and first.answer_starts == (177,) * 3
    assert examples[1].answers == ("Santa Clara, California", "Levi's Stadium",
                                   "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.")
    for e in examples:
        for text, start in zip(e.answers, e.answer_starts, strict=True):
            assert e.context[start : start + len(text)] == text


def test_featurize_windows_as_hf(hf, examples, features):
    expected = hf(
        [e.question.lstrip() for e in examples], [e.context for e in examples], truncation="only_second",
        max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="max_length",
    )
    assert features["input_ids"].tolist() == expected["input_ids"]
    assert features["attention_mask"].tolist() == expected["attention_mask"]
    assert features["example_index"].tolist() == expected["overflow_to_sample_mapping"]
    for f in range(len(features["input_ids"])):
        context = [s == 1 for s in expected.sequence_ids(f)]
        want = [list(o) if c else [-1, -1] for o, c in zip(expected["offset_mapping"][f], context, strict=True)]
        assert features["offset_mapping"][f].tolist() == want
    assert {k: v.dtype for k, v in features.items()} == dict.fromkeys(features, np.int32)
    assert features["offset_mapping"].shape == (len(features["input_ids"]), MAX_LENGTH, 2)
    assert len(features["input_ids"]) > 3 * len(examples)  # the long paragraph really was cut into windows


def test_windows_overlap_by_stride_and_cover_the_context(tok, examples, features):
    for i, e in enumerate(examples):
        whole = tok(e.question.lstrip(), e.context, return_offsets_mapping=True)
        context = [t for t, s in zip(whole["input_ids"], whole.sequence_ids(0), strict=True) if s == 1]
        windows = [
            features["input_ids"][f][features["offset_mapping"][f, :, 0] >= 0].tolist()
            for f in np.flatnonzero(features["example_index"] == i)
        ]
        for a, b in itertools.pairwise(windows):
            assert a[-STRIDE:] == b[:STRIDE]
        assert windows[0] + [t for w in windows[1:] for t in w[STRIDE:]] == context


def test_answer_positions_decode_to_the_answer(tok, examples, features):
    labelled = set()
    for f, (i, s, e) in enumerate(zip(features["example_index"], features["start_positions"],
                                      features["end_positions"], strict=True)):
        example, offsets = examples[i], features["offset_mapping"][f]
        answer, start_char = example.answers[0], example.answer_starts[0]
        inside = offsets[offsets[:, 0] >= 0]
        holds_answer = inside[0, 0] <= start_char and inside[-1, 1] >= start_char + len(answer)
        if not holds_answer:
            assert (s, e) == (0, 0)  # points at <s>
            continue
        labelled.add(int(i))
        assert 0 < s <= e
        assert example.context[offsets[s, 0] : offsets[e, 1]] == answer
        assert tok.decode(features["input_ids"][f, s : e + 1]).strip() == answer
    assert labelled == set(range(len(examples)))  # every answer is inside some window


def test_answer_in_the_last_context_token(tok, examples):
    # "... The capital of France is Paris" ends with the answer: HF run_qa.py's scan would run past it.
    example = examples[6]
    assert example.context.endswith(example.answers[0])
    features = qa.featurize([example], tok, max_length=MAX_LENGTH, doc_stride=STRIDE)
    s, e = features["start_positions"][-1], features["end_positions"][-1]
    assert s == e == np.flatnonzero(features["offset_mapping"][-1, :, 0] >= 0)[-1]
    assert tok.decode(features["input_ids"][-1, s : e + 1]) == " Paris"


def test_postprocess_recovers_gold_spans(examples, features):
    start, end = _gold_logits(features)
    predictions = qa.postprocess(start, end, features, examples)
    assert predictions == {e.id: e.answers[0] for e in examples}
    assert qa.compute_metrics((start, end), features, examples) == {"exact_match": 100.0, "f1": 100.0}


def test_postprocess_span_rules(tok):
    context = "The red fox saw a big blue bird near the old mill."
    example = qa.Example("x", "What did the fox see?", context, ("blue bird",), (context.index("blue"),))
    features = qa.featurize([example], tok, max_length=32, doc_stride=8)
    offsets = features["offset_mapping"][0]
    token = {context[a:b]: k for k, (a, b) in enumerate(offsets.tolist()) if a >= 0}
    start, end = np.zeros((1, 32)), np.zeros((1, 32))

    def best(**kwargs):
        return qa.postprocess(start, end, features, [example], **kwargs)["x"]

    start[0, token["red"]], end[0, token["fox"]] = 5.0, 5.0
    assert best() == "red fox"
    start[0, token["blue"]] = 8.0  # a better start, but after the best end: end < start is no span
    assert best() == "red fox"
    assert best(n_best=1) == ""  # the single best start (blue) and end (fox) make no span
    start[0, 2], end[0, 2] = 20.0, 20.0  # a question token: not a span of the context
    assert best() == "red fox"
    end[0, token["mill"]] = 7.0  # blue .. mill (6 tokens) scores 15 > 10
    assert best() == "blue bird near the old mill"
    assert best(max_answer_length=5) == "red fox"


def test_postprocess_takes_the_best_window(examples, features):
    start, end = _gold_logits(features)
    # "Super Bowl L" is near the end of the paragraph; make an earlier window prefer "Denver Broncos".
    i = [e.id for e in examples].index("56beace93aeaaa14008c91e2")
    windows = np.flatnonzero(features["example_index"] == i)
    denver = next(f for f in windows if features["offset_mapping"][f, :, 0].tolist().count(177) == 1)
    k = features["offset_mapping"][denver, :, 0].tolist().index(177)
    start[denver, k], end[denver, k + 1] = 12.0, 12.0
    assert qa.postprocess(start, end, features, examples)[examples[i].id] == "Denver Broncos"
    start[denver, k], end[denver, k + 1] = 9.0, 9.0  # now the gold window's 10 + 10 wins again
    assert qa.postprocess(start, end, features, examples)[examples[i].id] == "Super Bowl L"


def test_compute_metrics_scores_like_squad(examples, features):
    start, end = _gold_logits(features)
    shift = features["start_positions"] > 0
    start[shift, features["start_positions"][shift]] = 0.0
    start[shift, features["start_positions"][shift] + 1] = 10.0  # starts one token late: partial answers
    predictions = qa.postprocess(start, end, features, examples)
    scores = qa.compute_metrics((start, end), features, examples)
    reference = task_metrics.squad_scores(predictions, {e.id: e.answers for e in examples})
    assert scores == reference
    assert 0 <= scores["exact_match"] < scores["f1"] < 100


def test_featurize_errors(tok, examples):
    with pytest.raises(ValueError, match=r"longest question has 16 tokens, leaving 16 .* doc_stride=16"):
        qa.featurize(examples, tok, max_length=36, doc_stride=16)
    unanswered = [qa.Example(e.id, e.question, e.context) for e in examples]
    assert "start_positions" not in qa.featurize(unanswered, tok, max_length=MAX_LENGTH, doc_stride=STRIDE)
    with pytest.raises(ValueError, match="needs gold answers"):
        qa.compute_metrics((None, None), {}, unanswered)


def test_shared_squad_gold_spans_find_the_answers(tok):
    path = SHARED / "squad" / "dev-v1.1-part.json"
    if not path.exists():
        pytest.skip("shared SQuAD data not present")
    examples = qa.load_examples(path)
    assert len(examples) == 4961
    examples = examples[:300]
    features = qa.featurize(examples, tok)  # max_length 384, doc_stride 128
    predictions = qa.postprocess(*_gold_logits(features), features, examples)
    for e in examples:
        if not any(task_metrics.squad_exact_match(predictions[e.id], t) for t in e.answers):
            # Spans are whole tokens: a gold answer that is part of a word ("8" of "18") is found as the word.
            assert e.answers[0] in predictions[e.id] and e.answers[0] != predictions[e.id]
    assert qa.compute_metrics(_gold_logits(features), features, examples)["exact_match"] > 97


def test_postprocess_v2_null_against_best_span(tok):
    examples = qa.load_examples(DATA / "tasks" / "squad_v2.json")
    assert [e.answers for e in examples if not e.answers] == [(), (), ()]
    features = qa.featurize(examples, tok, max_length=MAX_LENGTH, doc_stride=STRIDE)
    assert (features["start_positions"][[not examples[i].answers for i in features["example_index"]]] == 0).all()
    start, end = _gold_logits(features)  # answerable: span 10 + 10; unanswerable: <s> 10 + 10
    null = start[:, 0] + end[:, 0]
    assert set(null) == {0.0, 20.0}
    unanswerable = np.array([not examples[i].answers for i in features["example_index"]])
    first_context = (features["offset_mapping"][:, :, 0] >= 0).argmax(axis=1)
    rows = np.flatnonzero(unanswerable)
    start[rows, first_context[rows]], end[rows, first_context[rows]] = 5.0, 5.0  # a weaker span: 5 + 5
    answers, diffs = qa.postprocess_v2(start, end, features, examples)
    assert answers == {e.id: e.answers[0] if e.answers else "" for e in examples}
    # An answerable question's null score is its lowest over windows (0 where <s> is not its label): 0 - 20.
    assert {diffs[e.id] for e in examples if e.answers} == {-20.0}
    assert {diffs[e.id] for e in examples if not e.answers} == {10.0}  # <s> 20 - span 10
    # Null only where the diff exceeds the threshold: at 10 the unanswerable ones answer with their span, the
    # context's first token ("The", and "G" of "Gull").
    below, _ = qa.postprocess_v2(start, end, features, examples, null_score_diff_threshold=9.9)
    assert below == answers
    at, _ = qa.postprocess_v2(start, end, features, examples, null_score_diff_threshold=10.0)
    assert {at[e.id] for e in examples if not e.answers} == {"The", "G"}
    assert {k: v for k, v in at.items() if v not in ("The", "G")} == {e.id: e.answers[0] for e in examples if e.answers}
    scores = task_metrics.squad_v2_scores(answers, {e.id: e.answers for e in examples}, diffs)
    assert scores["exact"] == 100.0 and scores["NoAns_total"] == 3.0 and scores["best_exact"] == 100.0


def test_v2_task_score_names(tok):
    from ml_collections import ConfigDict
    examples = qa.load_examples(DATA / "tasks" / "squad_v2.json")
    features = qa.featurize(examples, tok, max_length=MAX_LENGTH, doc_stride=STRIDE)
    config = ConfigDict(dict(data=dict(version_2_with_negative=True), n_best=20, max_answer_length=30,
                             null_score_diff_threshold=0.0))
    scores = qa.score(config, _gold_logits(features), features, examples, None)
    assert tuple(scores) == qa.metric_names(config) and scores["no_ans_exact"] == 100.0
