"""Sentence(-pair) classification: GLUE-style loaders, features equal to HF `RobertaTokenizerFast`'s, metrics."""

import json
from pathlib import Path

import numpy as np
import pytest

from roberta_jax.finetune import tasks
from roberta_jax.finetune.config import default_config
from roberta_jax.finetune.data import load_task_data
from roberta_jax.finetune.tasks import classification

DATA = Path(__file__).parent / "data"
TASKS = DATA / "tasks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_examples_know_the_line_they_start_on(tmp_path):
    csv_file, jsonl, json_list = tmp_path / "a.csv", tmp_path / "a.jsonl", tmp_path / "a.json"
    csv_file.write_text('sentence,label\n"two\nlines",1\n\nthird,0\n')  # a quoted field spans lines 2-3
    jsonl.write_text('{"sentence": "x", "label": "1"}\n\n{"sentence": "y", "label": "0"}\n')
    json_list.write_text('[{"sentence": "x", "label": "1"}]')
    assert [e.line for e in classification.load_examples(csv_file)] == [2, 5]
    assert [e.line for e in classification.load_examples(jsonl)] == [1, 3]
    assert [e.line for e in classification.load_examples(json_list)] == [None]


def test_load_sst2_tsv_keeps_text_verbatim():
    examples = classification.load_examples(TASKS / "sst2.tsv")
    assert len(examples) == 6
    assert examples[0] == classification.Example("a warm , funny and quietly moving film . ", None, "1")
    assert examples[2].text_a == 'its "twist" actually works '  # GLUE's TSVs have no quoting
    assert [e.label for e in examples] == ["1", "0", "1", "0", "1", "0"]
    assert classification.infer_label_list(examples) == ["0", "1"]


def test_load_pairs_from_csv_and_jsonl():
    rte = classification.load_examples(TASKS / "rte.csv")
    assert rte[0].text_a == "The museum opened in 1902, two years after the fire."
    assert rte[1].text_b == "The bridge, closed in March, reopened in May."
    assert classification.infer_label_list(rte) == ["entailment", "not_entailment"]
    stsb = classification.load_examples(TASKS / "stsb.jsonl")
    assert [e.label for e in stsb] == ["4.8", "4.2", "0.4", "3.0"]
    assert stsb[2] == classification.Example("A dog runs in the park.", "A cat sleeps on the sofa.", "0.4")


def test_load_named_columns_unlabelled_and_errors(tmp_path):
    path = tmp_path / "mnli.jsonl"
    rows = [{"p": f"premise {i}", "h": f"hypothesis {i}", "gold": i} for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = classification.load_examples(path, text_a="p", text_b="h", label="gold")
    assert examples[11] == classification.Example("premise 11", "hypothesis 11", "11")
    assert classification.infer_label_list(examples)[:3] == ["0", "1", "2"]  # numeric, not "0", "1", "10"
    assert classification.load_examples(path, text_a="p", label="none")[0] == classification.Example("premise 0")
    with pytest.raises(ValueError, match=r"known text column.*pass text_a="):
        classification.load_examples(path)
    with pytest.raises(ValueError, match="no column 'q'"):
        classification.load_examples(path, text_a="q")
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tsentence\n1\tfine\n0\ttoo\tmany\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3: 3 fields"):
        classification.load_examples(bad)


def test_featurize_single_sentences_as_hf(tok, hf):
    examples = classification.load_examples(TASKS / "sst2.tsv")
    features = classification.featurize(examples, tok, max_length=12, label_list=["0", "1"])
    expected = hf([e.text_a for e in examples], truncation=True, max_length=12, padding="max_length")
    assert features["input_ids"].tolist() == expected["input_ids"]
    assert features["attention_mask"].tolist() == expected["attention_mask"]
    assert features["input_ids"].dtype == features["attention_mask"].dtype == features["labels"].dtype == np.int32
    assert features["labels"].tolist() == [1, 0, 1, 0, 1, 0]
    assert features["input_ids"][0, -1] == tok.sep_token_id  # the first sentence was truncated
    dull = tok("dull ", add_special_tokens=False)["input_ids"]  # the trailing space is a token of its own
    assert features["input_ids"][5, : len(dull) + 2].tolist() == [0, *dull, 2]


def test_featurize_pairs_longest_first_as_hf(tok, hf):
    examples = classification.load_examples(TASKS / "rte.csv")
    labels = classification.infer_label_list(examples)
    for max_length in (64, 20):
        features = classification.featurize(examples, tok, max_length=max_length, label_list=labels)
        expected = hf(
            [e.text_a for e in examples], [e.text_b for e in examples],
            truncation="longest_first", max_length=max_length, padding="max_length",
        )
        assert features["input_ids"].tolist() == expected["input_ids"]
        assert features["attention_mask"].tolist() == expected["attention_mask"]
        assert features["labels"].tolist() == [0, 1, 1, 0]
    a = tok(examples[0].text_a, add_special_tokens=False)["input_ids"]
    b = tok(examples[0].text_b, add_special_tokens=False)["input_ids"]
    full = classification.featurize(examples, tok, max_length=64, label_list=labels)["input_ids"][0]
    assert full[: len(a) + len(b) + 4].tolist() == [0, *a, 2, 2, *b, 2]  # <s> A </s></s> B </s>


def test_featurize_regression_and_label_errors(tok):
    stsb = classification.load_examples(TASKS / "stsb.jsonl")
    features = classification.featurize(stsb, tok, max_length=32, regression=True)
    assert features["labels"].dtype == np.float32
    np.testing.assert_allclose(features["labels"], [4.8, 4.2, 0.4, 3.0], rtol=1e-6)
    sst2 = classification.load_examples(TASKS / "sst2.tsv")
    with pytest.raises(ValueError, match="label_list is needed"):
        classification.featurize(sst2, tok)
    with pytest.raises(ValueError, match=r"labels \['1'\] are not in label_list"):
        classification.featurize(sst2, tok, label_list=["0"])
    unlabelled = [classification.Example(e.text_a) for e in sst2]
    assert set(classification.featurize(unlabelled, tok, max_length=8)) == {"input_ids", "attention_mask"}


def test_compute_metrics_classification_and_regression():
    features = {"labels": np.array([0, 1, 1, 0, 1, 1], np.int32)}
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1], [0.0, 1.0], [-1.0, 1.0]])
    # Predicted [0, 1, 0, 0, 1, 1]: tp 3, fn 1, fp 0, tn 2; MCC = (3 * 2 - 0 * 1) / sqrt(3 * 4 * 2 * 3).
    scores = classification.compute_metrics(logits, features)
    assert scores == pytest.approx({"accuracy": 5 / 6, "f1": 6 / 7, "matthews_correlation": np.sqrt(0.5)})
    three = {"labels": np.array([0, 1, 2, 2])}
    logits3 = np.eye(3)[[0, 1, 2, 1]]
    assert classification.compute_metrics(logits3, three)["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # macro
    targets = {"labels": np.array([4.8, 4.2, 0.4, 3.0], np.float32)}
    regression = classification.compute_metrics(np.array([[5.0], [2.0], [1.0], [4.0]]), targets)
    assert set(regression) == {"pearson", "spearman"}
    assert regression["spearman"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="5 rows of logits for 6"):
        classification.compute_metrics(logits[:5], features)


def test_shared_sst2_dev_loads():
    path = SHARED / "sst2" / "dev.tsv"
    if not path.exists():
        pytest.skip("shared SST-2 data not present")
    examples = classification.load_examples(path)
    assert len(examples) == 872
    assert classification.infer_label_list(examples) == ["0", "1"]
    assert examples[0].text_a.startswith("it 's a charming and often affecting journey")


def classification_config(train_file, eval_file, **data):
    c = default_config()
    c.task = "classification"
    c.data.update(train_file=str(train_file), eval_file=str(eval_file), max_length=16, **data)
    return c


def test_labels_are_stripped_in_training_eval_and_the_config_list(tmp_path, tok):
    """`1 ` and `1` are one class: stripped as GLUE's readers strip them, in both files and in data.labels."""
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("text_a\tlabel\na warm film\t1\ndull\t0 \nfunny\t 1 \nflat\t0\n")
    dev.write_text("text_a\tlabel\nbland\t0 \nmoving\t1\n")
    assert [e.label for e in classification.load_examples(train)] == ["1", "0", "1", "0"]
    data = load_task_data(classification_config(train, dev), tok, tasks.get_task("classification"))
    assert data.labels == ["0", "1"]
    assert data.train_features["labels"].tolist() == [1, 0, 1, 0]
    assert data.eval_features["labels"].tolist() == [0, 1]
    listed = load_task_data(classification_config(train, dev, labels=" 1 , 0"), tok, tasks.get_task("classification"))
    assert listed.labels == ["1", "0"] and listed.eval_features["labels"].tolist() == [1, 0]


def test_a_training_file_without_a_label_column_is_named_with_its_columns(tmp_path, tok):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("text_a\na warm film\ndull\n")
    dev.write_text("text_a\tlabel\nbland\t0\nmoving\t1\n")
    with pytest.raises(ValueError, match=rf"^{train} has no label column \(columns: text_a\); .*'label'"):
        load_task_data(classification_config(train, dev), tok, tasks.get_task("classification"))
    with pytest.raises(ValueError, match=rf"^{dev} has no label column \(columns: text_a, label\); .*'gold'"):
        load_task_data(classification_config(dev, dev, label_column="gold"), tok, tasks.get_task("classification"))
    assert classification.load_examples(train)[0] == classification.Example("a warm film")  # a test split


def test_headerless_cola_columns_and_extra_eval_files(tmp_path, tok):
    """CoLA's TSV has no header: `data.columns` names its columns and its first line is a row; every
    `data.extra_eval_files` set is read and featurized with the training labels, a bad label named."""
    train, dev, other = tmp_path / "train.tsv", tmp_path / "dev.tsv", tmp_path / "other.tsv"
    train.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    dev.write_text("bc01\t1\t\tThe sailors rode the breeze clear of the rocks.\n")
    other.write_text("x\t0\t*\tThe more we study verbs.\nx\t0\t*\tSo much.\n")
    config = classification_config(train, dev, columns="source,label,original,sentence", text_a="sentence",
                                   extra_eval_files=f"mm={other}")
    data = load_task_data(config, tok, tasks.get_task("classification"))
    assert [e.text_a for e in data.train_examples] == ["Our friends won't buy this analysis.", "They drank the pub."]
    assert [e.line for e in data.train_examples] == [1, 2] and data.labels == ["0", "1"]
    assert [(prefix, len(examples), features["labels"].tolist()) for prefix, examples, features in data.eval_sets()] \
        == [("", 1, [1]), ("mm/", 2, [0, 0])]
    other.write_text("x\t2\t*\tThe more we study verbs.\n")
    with pytest.raises(ValueError, match=rf"^{other}:1: label '2' is not one of the labels"):
        load_task_data(config, tok, tasks.get_task("classification"))
    config.data.extra_eval_files = f"m/m={other}"
    with pytest.raises(ValueError, match="extra_eval_files: 'm/m=.*' is not NAME=PATH"):
        load_task_data(config, tok, tasks.get_task("classification"))
