"""The figures: panel layout, that each one renders to a PNG, and that drawing needs no JAX."""

import io
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from roberta_jax.tools import plots, views  # noqa: E402


def png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def test_attention_grid_has_a_panel_per_layer_and_head():
    weights = np.random.default_rng(0).dirichlet(np.ones(5), size=(3, 2, 5)).astype(np.float32)
    fig = plots.attention_grid(["<s>", "a", "b", "c", "</s>"], weights)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title() == "layer 0 head 0" and fig.axes[5].get_title() == "layer 2 head 1"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["<s>", "a", "b", "c", "</s>"]
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_training_curves_skip_tags_the_run_lacks():
    scalars = {"train/loss": (np.arange(1, 11), np.linspace(8, 5, 10)),
               "eval/loss": (np.array([5, 10]), np.array([7.0, 6.0]))}
    fig = plots.training_curves(scalars)
    assert len(fig.axes) == 1
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train/loss", "eval/loss"]
    assert png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="none of the tags"):
        plots.training_curves(scalars, panels=[["eval/accuracy"]])


def test_packed_and_masked_rows_render_with_labels():
    docs = np.array([[views.SPECIAL, 0, 0, views.SPECIAL, 1, views.SPECIAL],
                     [views.SPECIAL, 1, views.SPECIAL, views.PADDING, views.PADDING, views.PADDING]])
    labels = [["<s>", "a", "b", "</s>", "c", "</s>"], ["<s>", "d", "</s>", "<pad>", "<pad>", "<pad>"]]
    fig = plots.packed_rows(docs, labels)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["document 0", "document 1", "<s> / </s>"]
    assert png_bytes(fig).startswith(b"\x89PNG")
    kind = np.zeros((2, 6), np.int8)
    kind[0, 1], kind[0, 4], kind[1, 1] = views.MASKED, views.RANDOM, views.UNCHANGED
    fig = plots.masked_rows({"step 1": (kind, labels), "step 2": (kind[::-1], None)})
    assert [ax.get_title() for ax in fig.axes] == ["step 1", "step 2"]
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_run_curves_draw_one_line_per_run():
    steps = np.array([2, 4])
    fig = plots.run_curves({"a": (steps, np.array([3.0, 2.0])), "b": (steps, np.array([3.5, 2.5]))}, "eval/loss")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a", "b"]
    assert fig.axes[0].get_ylabel() == "eval/loss"
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_importing_plots_imports_neither_jax_nor_orbax():
    # A fresh interpreter: this one has imported JAX through other tests already.
    code = ("import sys, roberta_jax.tools.plots; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'orbax', 'flax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
