"""Multiple choice: SWAG loader, [N, choices, L] features equal to HF's encoding of each pair, accuracy."""

import json
from pathlib import Path

import numpy as np
import pytest

from roberta_jax.finetune.tasks import multiple_choice

DATA = Path(__file__).parent / "data"
SWAG = DATA / "tasks" / "swag.csv"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_load_swag_csv():
    examples = multiple_choice.load_examples(SWAG)
    assert len(examples) == 3
    assert examples[0] == multiple_choice.Example(
        context="She opens the oven door.",
        endings=("takes out a tray of cookies.", "swims across the lake.", "paints the ceiling, slowly.",
                 "reads the newspaper upside down."),
        question="She",
        label=0,
    )
    assert [e.label for e in examples] == [0, 1, 2]


def test_load_json_endings_list_and_errors(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [
        {"ctx": "Pick one.", "endings": ["a", "b", "c"], "answer": 2},
        {"ctx": "Again.", "endings": ["x", "y", "z"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = multiple_choice.load_examples(path, context="ctx", question=None, endings="endings", label="answer")
    assert examples == [
        multiple_choice.Example("Pick one.", ("a", "b", "c"), "", 2), multiple_choice.Example("Again.", ("x", "y", "z"))
    ]
    with pytest.raises(ValueError, match="no column 'sent1'"):
        multiple_choice.load_examples(path)
    with pytest.raises(ValueError, match="no column 'option' nor option0"):
        multiple_choice.load_examples(path, context="ctx", question=None, endings="option")


@pytest.mark.parametrize("max_length", [32, 12])
def test_featurize_choices_as_hf_pairs(tok, hf, max_length):
    examples = multiple_choice.load_examples(SWAG)
    features = multiple_choice.featurize(examples, tok, max_length=max_length)
    assert features["input_ids"].shape == features["attention_mask"].shape == (3, 4, max_length)
    assert features["labels"].tolist() == [0, 1, 2]
    assert {v.dtype for v in features.values()} == {np.dtype(np.int32)}
    for i, e in enumerate(examples):
        for c, ending in enumerate(e.endings):
            expected = hf(e.context, f"{e.question} {ending}", truncation=True, max_length=max_length,
                          padding="max_length")
            assert features["input_ids"][i, c].tolist() == expected["input_ids"]
            assert features["attention_mask"][i, c].tolist() == expected["attention_mask"]
    context = tok(examples[1].context, add_special_tokens=False)["input_ids"]
    second = tok("He starts jogging down the street.", add_special_tokens=False)["input_ids"]
    if max_length == 32:  # <s> context </s></s> sent2 ending </s>
        assert features["input_ids"][1, 1, : len(context) + len(second) + 4].tolist() == [0, *context, 2, 2, *second, 2]


def test_featurize_errors(tok):
    uneven = [multiple_choice.Example("c", ("a", "b"), label=0), multiple_choice.Example("c", ("a", "b", "d"), label=0)]
    with pytest.raises(ValueError, match=r"different numbers of endings \[2, 3\]"):
        multiple_choice.featurize(uneven, tok)
    with pytest.raises(ValueError, match=r"labels \[2\] are not indices of 2 endings"):
        multiple_choice.featurize([multiple_choice.Example("c", ("a", "b"), label=2)], tok)
    unlabelled = [multiple_choice.Example("c", ("a", "b"))]
    assert set(multiple_choice.featurize(unlabelled, tok, max_length=8)) == {"input_ids", "attention_mask"}


def test_compute_metrics_accuracy():
    features = {"labels": np.array([0, 1, 2, 3], np.int32)}
    logits = np.array([[3.0, 1, 0, 0], [0, 2, 1, 0], [5, 0, 1, 0], [0, 0, 0, 1]])
    assert multiple_choice.compute_metrics(logits, features) == {"accuracy": 0.75}

