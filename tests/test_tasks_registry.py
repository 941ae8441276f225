"""The task registry that finetune.py selects from by config name."""

import pytest

from roberta_jax.finetune import tasks


def test_registry_names_the_task_modules():
    expected = {
        "classification": tasks.classification, "ner": tasks.ner, "qa": tasks.qa,
        "multiple_choice": tasks.multiple_choice,
    }
    assert tasks.TASKS == expected
    for module in tasks.TASKS.values():
        assert callable(module.load_examples) and callable(module.featurize) and callable(module.compute_metrics)
    assert tasks.get_task("qa") is tasks.qa
    with pytest.raises(ValueError, match="unknown task 'multiple-choice'; did you mean 'multiple_choice'"):
        tasks.get_task("multiple-choice")
