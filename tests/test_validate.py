"""Config validation: each bad field is refused before any work, by its key, with its value and the fix."""

import os

import pytest

from roberta_jax.train import cli, validate
from roberta_jax.train.config import default_config
from tests.train_runs import run_train


def good_config():
    c = default_config()
    c.data.train_files = "corpus.txt"
    c.batch_size, c.total_steps = 8, 10
    c.model.max_position_embeddings, c.data.max_seq_length = 34, 32
    return c


@pytest.mark.parametrize("field, value, key, words", [
    ("batch_size", 0, "batch_size", "must be positive"),
    ("grad_accum_steps", 3, "grad_accum_steps", "does not divide batch_size=8"),
    ("data.max_seq_length", 33, "data.max_seq_length", "model.max_position_embeddings - 2 = 32"),
    ("optimizer.peak_lr", -1e-3, "optimizer.peak_lr", "positive number"),
    ("total_steps", 0, "total_steps", "nothing would be trained"),
    ("data.eval_files", "held_out.txt", "data.eval_fraction", "either from data.eval_files"),
    ("mesh.data", 3, "mesh", "needs 3 devices, found 2"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps", "must be positive"),
    ("data.train_files", " ", "data.train_files", "no training data"),
])
def test_a_bad_field_is_named_with_its_value_and_fix(field, value, key, words):
    c = good_config()
    c.data.eval_fraction = 0.05
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(validate.ConfigError, match=words) as err:
        validate.pretraining(c, num_devices=2, num_hosts=1)
    assert err.value.key == key
    assert str(err.value).startswith(f"--config.{key}=") and "\n" not in str(err.value)


def test_the_batch_splits_over_hosts_and_batch_shards():
    c = good_config()
    validate.pretraining(c, num_devices=8, num_hosts=2)  # 8 rows over 2 hosts and 8 data shards
    with pytest.raises(validate.ConfigError, match="does not split over the 3 hosts"):
        validate.pretraining(c, num_devices=3, num_hosts=3)
    c.grad_accum_steps = 2
    with pytest.raises(validate.ConfigError, match="microbatches of 4 does not split over the 8 batch shards"):
        validate.pretraining(c, num_devices=8, num_hosts=1)


def test_train_py_prints_one_line_and_the_traceback_only_with_verbose(tmp_path, corpus):
    out = run_train(tmp_path, corpus, "--config.grad_accum_steps=3", succeeds=False)
    assert out.returncode == cli.EXIT_BAD_INPUT and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "train.py: error: --config.grad_accum_steps=3: does not divide batch_size=8; choose a divisor of the batch "
        "(or another batch)")
    assert os.listdir(tmp_path) == []  # refused before the workdir is made
    verbose = run_train(tmp_path, corpus, "--config.grad_accum_steps=3", "--verbose", succeeds=False)
    assert "Traceback" in verbose.stderr and verbose.stderr.endswith(out.stderr.strip().splitlines()[-1] + "\n")
