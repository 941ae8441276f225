"""The conversion command line: HF directory -> Orbax params -> HF directory, logits unchanged."""

import os
import subprocess
import sys

import numpy as np
import pytest

from roberta_jax.tools import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_round_trip_through_orbax_keeps_logits_and_tokenizer_files(tmp_path):
    from tests.test_hf_parity import batch, hf_outputs, make_hf_model

    original = make_hf_model("RobertaForTokenClassification", seed=4)
    original.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "orbax")])
    convert.main(["to-hf", str(tmp_path / "orbax"), str(tmp_path / "back")])

    assert (tmp_path / "back" / "merges.txt").read_text() == "#version: 0.2\n"
    reloaded, info = transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert {k: v for k, v in info.items() if v} == {}
    ids, mask, types = batch("RobertaForTokenClassification")
    for a, b in zip(hf_outputs(reloaded.eval(), ids, mask, types), hf_outputs(original, ids, mask, types)):
        np.testing.assert_array_equal(a, b)


def test_from_hf_without_architectures_asks_for_one(tmp_path, capsys):
    from tests.test_hf_parity import make_hf_model

    make_hf_model("RobertaModel").save_pretrained(tmp_path / "hf")
    import json

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "orbax")])
    assert "--architecture" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_it_and_verbose_adds_the_traceback(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "roberta_jax.tools.convert", "to-hf", str(tmp_path / "nowhere"),
               str(tmp_path / "hf")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    out = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert out.stderr.startswith("python -m roberta_jax.tools.convert: error: ") and "nowhere" in out.stderr
    verbose = subprocess.run([*command, "--verbose"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
