"""Matplotlib figures for the notebooks and `sweep compare --plot`; each function returns a Figure.

Figures are made with `pyplot`, so a notebook shows each one once at the end of its cell; a
script saves it (`fig.savefig(path)`) and closes it (`plt.close(fig)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from roberta_jax.tools.views import MASKED, NOT_CHOSEN, PADDING, RANDOM, SPECIAL, UNCHANGED

if TYPE_CHECKING:  # a type only: `events` imports the training metrics and, with them, JAX
    from roberta_jax.tools.events import Scalars

# Tick labels on every token only up to this length; longer sequences get numbered ticks.
MAX_LABELLED_TOKENS = 40
_SPECIAL_COLOR, _PADDING_COLOR = (0.75, 0.75, 0.75), (1.0, 1.0, 1.0)
_MASK_COLORS = {NOT_CHOSEN: (0.95, 0.95, 0.95), MASKED: (0.84, 0.15, 0.16), RANDOM: (1.0, 0.6, 0.1),
                UNCHANGED: (0.17, 0.63, 0.17)}
_MASK_NAMES = {MASKED: "→ <mask>", RANDOM: "→ random token", UNCHANGED: "chosen, unchanged"}


def attention_grid(tokens: Sequence[str], weights: np.ndarray, cell_inches: float = 2.2) -> Figure:
    """Heatmaps of attention weights [layers, heads, L, L]: one row of panels per layer, one
    column per head; rows of a panel are query tokens, columns attended tokens."""
    num_layers, num_heads, length, _ = weights.shape
    fig, axes = plt.subplots(num_layers, num_heads, squeeze=False, constrained_layout=True,
                             figsize=(cell_inches * num_heads + 1, cell_inches * num_layers + 1))
    labelled = length <= MAX_LABELLED_TOKENS
    for layer in range(num_layers):
        for head in range(num_heads):
            ax = axes[layer, head]
            ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if labelled and layer == num_layers - 1:
                ax.set_xticks(range(length), tokens, rotation=90, fontsize=6)
            if labelled and head == 0:
                ax.set_yticks(range(length), tokens, fontsize=6)
    fig.suptitle("attention weights (row: query token, column: attended token)")
    return fig


DEFAULT_PANELS = (("train/loss", "eval/loss"), ("train/mlm_accuracy", "eval/accuracy"), ("train/learning_rate",))


def training_curves(scalars: Scalars, panels: Sequence[Sequence[str]] = DEFAULT_PANELS) -> Figure:
    """One panel per group of tags, each tag a line against the step; tags the run lacks are skipped."""
    panels = [[t for t in group if t in scalars] for group in panels]
    panels = [group for group in panels if group]
    if not panels:
        raise ValueError(f"none of the tags asked for is logged; the run has {sorted(scalars)}")
    fig, axes = plt.subplots(1, len(panels), squeeze=False, constrained_layout=True, figsize=(5 * len(panels), 3.5))
    for ax, group in zip(axes[0], panels):
        for tag in group:
            steps, values = scalars[tag]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=tag)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def _grid(ax, colors: np.ndarray, labels: Sequence[Sequence[str]] | None, title: str) -> None:
    """Draws an RGB grid [rows, L, 3] with optional per-cell text."""
    ax.imshow(colors, interpolation="nearest", aspect="auto")
    rows, length = colors.shape[:2]
    ax.set_xticks(np.arange(-0.5, length), minor=True)
    ax.set_yticks(np.arange(-0.5, rows), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    if labels is not None:
        fontsize = max(4, min(7, 170 // length))
        for r in range(rows):
            for c in range(length):
                ax.text(c, r, labels[r][c], ha="center", va="center", fontsize=fontsize, clip_on=True)
    ax.set_yticks(range(rows), [f"row {r}" for r in range(rows)])
    ax.set_xlabel("position")
    ax.set_title(title)


def packed_rows(doc_index: np.ndarray, labels: Sequence[Sequence[str]] | None = None) -> Figure:
    """Packed rows [rows, L] colored by document (`explore.document_index`); special tokens grey,
    padding white; `labels` (token strings per cell) are written into the cells."""
    rows, length = doc_index.shape
    palette = plt.get_cmap("tab10")
    colors = np.array([[_SPECIAL_COLOR if d == SPECIAL else _PADDING_COLOR if d == PADDING else palette(d % 10)[:3]
                        for d in row] for row in doc_index])
    fig, ax = plt.subplots(constrained_layout=True, figsize=(max(6, 0.6 * length), 0.5 * rows + 1.2))
    _grid(ax, colors, labels, "FULL-SENTENCES rows: one color per document")
    docs = sorted({int(d) for d in doc_index.flat if d >= 0})
    handles = [Patch(color=palette(d % 10), label=f"document {d}") for d in docs]
    handles.append(Patch(color=_SPECIAL_COLOR, label="<s> / </s>"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def masked_rows(panels: Mapping[str, tuple[np.ndarray, Sequence[Sequence[str]] | None]]) -> Figure:
    """One grid per entry `title: (kind [rows, L], labels)`, cells colored by what the masking did
    (`explore.mask_rows` kinds); `labels` (the corrupted tokens) are written into the cells."""
    first = next(iter(panels.values()))[0]
    rows, length = first.shape
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, constrained_layout=True,
                             figsize=(max(6, 0.6 * length), (0.5 * rows + 1.2) * len(panels)))
    for ax, (title, (kind, labels)) in zip(axes[:, 0], panels.items()):
        colors = np.array([[_MASK_COLORS[int(k)] for k in row] for row in kind])
        _grid(ax, colors, labels, title)
    handles = [Patch(color=_MASK_COLORS[k], label=name) for k, name in _MASK_NAMES.items()]
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def run_curves(series: Mapping[str, tuple[np.ndarray, np.ndarray]], metric: str) -> Figure:
    """One line per run, `metric` against the step (`sweep compare --plot`)."""
    fig, ax = plt.subplots(constrained_layout=True, figsize=(8, 5))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=name)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return fig
