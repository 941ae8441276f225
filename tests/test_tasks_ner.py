"""Token classification: CoNLL loader, first-sub-word labels equal to HF `run_ner.py`'s, seqeval metrics."""

from pathlib import Path

import numpy as np
import pytest

from roberta_jax.finetune.tasks import ner

DATA = Path(__file__).parent / "data"
CONLL = DATA / "tasks" / "conll.txt"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def hf(make_hf):
    """HF's tokenizer as `run_ner.py` makes it for pre-split words."""
    return make_hf(add_prefix_space=True)


@pytest.fixture(scope="module")
def examples():
    return ner.load_examples(CONLL)


def test_load_conll(examples, tmp_path):
    assert [len(e.words) for e in examples] == [7, 7, 4, 3]  # -DOCSTART- skipped; last sentence unterminated
    assert examples[0].words == ("Angela", "Merkel", "visited", "Zürich", "on", "1996-08-22", ".")
    assert examples[0].tags == ("B-PER", "I-PER", "O", "B-LOC", "O", "O", "O")
    assert examples[3] == ner.Example(("Blackburn", "scored", "twice"), ("B-PER", "O", "O"))
    assert ner.infer_label_list(examples) == LABELS
    four = tmp_path / "four.txt"
    four.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    assert ner.load_examples(four) == [
        ner.Example(("EU", "rejects"), ("B-ORG", "O")), ner.Example(("Peter",), ("B-PER",))
    ]
    assert ner.load_examples(four, tag_column=None)[1] == ner.Example(("Peter",))
    assert [e.lines for e in ner.load_examples(four)] == [(3, 4), (7,)]  # each word's line, for errors
    one = tmp_path / "one.txt"
    one.write_text("EU\nrejects\n")
    with pytest.raises(ValueError, match=r"one.txt:1: 'EU' has no tag column; .* tag_column=None"):
        ner.load_examples(one)


def _hf_run_ner_labels(hf_enc, examples, label_ids):
    """HF `run_ner.py`'s alignment (label_all_tokens=False): a word's tag on its first sub-word, -100 elsewhere."""
    rows = []
    for i, example in enumerate(examples):
        row, previous = [], None
        for word in hf_enc.word_ids(i):
            row.append(-100 if word is None or word == previous else label_ids[example.tags[word]])
            previous = word
        rows.append(row)
    return rows


@pytest.mark.parametrize("max_length", [32, 9])
def test_featurize_first_sub_word_labels_as_hf(tok, hf, examples, max_length):
    features = ner.featurize(examples, tok, max_length=max_length, label_list=LABELS)
    expected = hf(
        [list(e.words) for e in examples], is_split_into_words=True, truncation=True, max_length=max_length,
        padding="max_length",
    )
    assert features["input_ids"].tolist() == expected["input_ids"]
    assert features["attention_mask"].tolist() == expected["attention_mask"]
    label_ids = {t: i for i, t in enumerate(LABELS)}
    assert features["labels"].tolist() == _hf_run_ner_labels(expected, examples, label_ids)
    assert all(v.dtype == np.int32 and v.shape == (4, max_length) for v in features.values())
    labelled = features["labels"] != -100
    np.testing.assert_array_equal(labelled, features["word_index"] >= 0)
    if max_length == 32:
        # Every word labelled once; "Zürich" and "1996-08-22" have several sub-words, only the first labelled.
        assert labelled.sum() == sum(len(e.words) for e in examples)
        zurich = tok(" Zürich", add_special_tokens=False)["input_ids"]
        assert len(zurich) > 1
        start = features["input_ids"][0].tolist().index(zurich[0])
        assert features["labels"][0, start : start + len(zurich)].tolist() == [1] + [-100] * (len(zurich) - 1)
        assert features["word_index"][0, start : start + len(zurich)].tolist() == [3] + [-1] * (len(zurich) - 1)


def test_featurize_errors_and_unlabelled(tok, examples):
    with pytest.raises(ValueError, match="label_list is needed"):
        ner.featurize(examples, tok)
    with pytest.raises(ValueError, match=r"tags \['B-MISC'\] are not in label_list"):
        ner.featurize(examples, tok, label_list=[t for t in LABELS if t != "B-MISC"])
    unlabelled = [ner.Example(e.words) for e in examples]
    assert set(ner.featurize(unlabelled, tok, max_length=16)) == {"input_ids", "attention_mask", "word_index"}


def _logits_for(features, tag_per_word, examples):
    """Logits [N, L, K] whose argmax at each word's first sub-word is the given tag (noise elsewhere)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(*features["input_ids"].shape, len(LABELS)))
    for i, j in zip(*np.nonzero(features["word_index"] >= 0), strict=True):
        logits[i, j, LABELS.index(tag_per_word[i][features["word_index"][i, j]])] = 10.0
    return logits


def test_compute_metrics_maps_first_sub_words_back_to_words(tok, examples):
    seqeval = pytest.importorskip("seqeval.metrics")
    features = ner.featurize(examples, tok, max_length=32, label_list=LABELS)
    gold = [list(e.tags) for e in examples]
    assert ner.compute_metrics(_logits_for(features, gold, examples), features, examples, LABELS) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0
    }
    guess = [list(t) for t in gold]
    guess[0][1] = "B-PER"  # splits "Angela Merkel"
    guess[1][4] = "O"  # "European Commission" -> "European"
    guess[2][3] = "I-LOC"  # "results": an I- of another type than the MISC before it starts a LOC entity
    guess[3][0] = "I-PER"  # I- without B- still starts the entity: found
    scores = ner.compute_metrics(_logits_for(features, guess, examples), features, examples, LABELS)
    assert ner.predict_tags(_logits_for(features, guess, examples), features, examples, LABELS) == guess
    assert scores == pytest.approx({
        "precision": seqeval.precision_score(gold, guess), "recall": seqeval.recall_score(gold, guess),
        "f1": seqeval.f1_score(gold, guess), "accuracy": seqeval.accuracy_score(gold, guess),
    })
    assert 0 < scores["f1"] < 1


def test_truncated_words_are_predicted_o(tok, examples):
    features = ner.featurize(examples, tok, max_length=5, label_list=LABELS)
    gold = [list(e.tags) for e in examples]
    predicted = ner.predict_tags(_logits_for(features, gold, examples), features, examples, LABELS)
    # <s> + 3 tokens + </s>: "Angela Merkel visited" stay, "Zürich" (B-LOC) and the rest are cut off.
    assert predicted[0] == ["B-PER", "I-PER", "O", "O", "O", "O", "O"]
    assert predicted[3] == gold[3]
    scores = ner.compute_metrics(_logits_for(features, gold, examples), features, examples, LABELS)
    assert scores["precision"] == 1.0 and scores["recall"] < 1.0
    with pytest.raises(ValueError, match="do not match 3 examples"):
        ner.predict_tags(features["labels"], features, examples[:3], LABELS)


def test_shared_conll_valid_loads():
    path = SHARED / "conll2003" / "valid.txt"
    if not path.exists():
        pytest.skip("shared CoNLL-2003 data not present")
    examples = ner.load_examples(path)
    assert (len(examples), sum(len(e.words) for e in examples)) == (3250, 51362)  # the standard dev set size
    assert ner.infer_label_list(examples) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                                                 "B-PER", "I-PER"]
