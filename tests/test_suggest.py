"""The one "did you mean" of every error about a misspelt name."""

from roberta_jax.suggest import did_you_mean, nearest


def test_nearest_is_the_closest_above_the_cutoff():
    assert nearest("optimiser", ["optimizer", "model", "mesh"]) == "optimizer"
    assert nearest("peak_lrr", ["peak_lr", "end_lr", "b1"]) == "peak_lr"
    assert nearest("xyz", ["tiny", "base", "large"]) is None
    assert nearest("xyz", ["tiny", "base", "large"], cutoff=0.0) in {"tiny", "base", "large"}
    assert nearest("anything", [], cutoff=0.0) is None


def test_did_you_mean_is_written_after_the_name():
    assert did_you_mean("larg", ["tiny", "base", "large"]) == "; did you mean 'large'?"
    assert did_you_mean("xyz", ["tiny", "base", "large"]) == ""
    assert f"unknown task 'qa_'{did_you_mean('qa_', ['qa', 'ner'])}" == "unknown task 'qa_'; did you mean 'qa'?"
