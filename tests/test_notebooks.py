"""The notebooks run top to bottom on a tiny pretraining run made here, and draw every figure.

Each notebook has one cell tagged `parameters` (replaced here with the run's paths) and tags
every cell that draws a figure with `figure`.
"""

import os
import subprocess
import sys

import pytest

from roberta_jax.train import workdir as workdir_files

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
STEPS = 6
TINY = {
    "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 4,
    "model.intermediate_size": 64, "model.max_position_embeddings": 66, "tokenizer.vocab_size": 300,
    "data.max_seq_length": 32, "batch_size": 8, "total_steps": STEPS, "log_every_steps": 2,
    "eval_every_steps": 3, "eval_batches": 2, "checkpoint.every_steps": STEPS, "progress": False,
    "export_hf": True,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A pretraining workdir: Orbax checkpoint, tokenizer, events, metrics.jsonl and the hf export."""
    root = tmp_path_factory.mktemp("run")
    corpus = root / "corpus.txt"
    with open(os.path.join(REPO, "data", "demo_corpus.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(40_000), encoding="utf-8")
    workdir = root / "workdir"
    # A process of its own: train.py defines absl flags, which one process can define only once.
    cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--config={REPO}/configs/tiny.py", f"--workdir={workdir}",
           f"--config.data.train_files={corpus}", *(f"--config.{k}={v}" for k, v in TINY.items())]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir


def execute(name, monkeypatch, **parameters):
    """Runs notebooks/NAME.ipynb with its parameter cell replaced; returns the executed notebook."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    # The kernel inherits this environment: the package from this checkout, JAX on the CPU.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()
    return nb


def check_outputs(nb, num_figures):
    figures = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert len(figures) == num_figures
    for cell in figures:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, (cell.source, cell.outputs)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("source", ["workdir", "hf"])
def test_explore_checkpoint_notebook(workdir, monkeypatch, source):
    path = str(workdir if source == "workdir" else workdir / workdir_files.HF_EXPORT)
    text = check_outputs(execute("explore_checkpoint", monkeypatch, CHECKPOINT=path, LOGDIR=None), num_figures=2)
    assert (f"orbax checkpoint {path}, step {STEPS}" if source == "workdir" else f"hf checkpoint {path}") in text
    assert "2 layers, hidden size 32, 4 heads" in text
    assert "weights (2, 4, " in text and " nan" not in text
    assert f"eval/loss: 2 points, step {STEPS}" in text  # curves read from the run's event files


def test_data_and_masking_notebook(workdir, monkeypatch):
    text = check_outputs(execute("data_and_masking", monkeypatch, TOKENIZER=str(workdir / workdir_files.TOKENIZER),
                                 MAX_SEQ_LENGTH=24), num_figures=2)
    assert "5 documents -> " in text and "step 1: " in text and "step 2: " in text


def test_notebooks_are_committed_without_outputs():
    for name in ("explore_checkpoint", "data_and_masking"):
        nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.source)
