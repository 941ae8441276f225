"""Reading HF checkpoints: a damaged `model.safetensors` is an error naming the file, one line on the command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from roberta_jax.model import hf_io
from roberta_jax.model.config import preset


def truncated_hf_dir(path) -> str:
    """An HF directory whose `model.safetensors` lost its end (an interrupted download)."""
    os.makedirs(path)
    preset("micro", architectures=("RobertaForMaskedLM",)).to_json_file(str(path))
    weights = str(path / hf_io.SAFETENSORS)
    safetensors.numpy.save_file({"embeddings.word_embeddings.weight": np.zeros((64, 64), np.float32)}, weights)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) - 100)
    return weights


def test_a_truncated_safetensors_file_is_a_value_error_naming_it(tmp_path):
    weights = truncated_hf_dir(tmp_path / "hf")
    with pytest.raises(ValueError, match=f"^{weights} is truncated or corrupt"):
        hf_io.read_safetensors(str(tmp_path / "hf"))


def test_convert_from_a_truncated_safetensors_file_is_one_line_exit_2(tmp_path):
    weights = truncated_hf_dir(tmp_path / "hf")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-m", "roberta_jax.tools.convert", "from-hf", str(tmp_path / "hf"),
                          str(tmp_path / "orbax")], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert f"{weights} is truncated or corrupt" in out.stderr
    assert not os.path.exists(tmp_path / "orbax")
