"""The "did you mean" of every error about a misspelt name (a config key, a preset, a task).

    nearest("optimiser", ["optimizer", "model"])         # "optimizer"
    did_you_mean("larg", ["tiny", "base", "large"])      # "; did you mean 'large'?"
    did_you_mean("xyz", ["tiny", "base", "large"])       # "" (nothing close enough)

Closeness is `difflib`'s ratio (2 x matching characters / total characters), so the same typo
gets the same suggestion wherever it is made. This module imports nothing from the package:
every layer may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's own default: one threshold for every message, so a typo is hinted at alike everywhere.
DEFAULT_CUTOFF = 0.6


def nearest(name: str, choices: Iterable[str], cutoff: float = DEFAULT_CUTOFF) -> str | None:
    """The one of `choices` closest to `name`, or None when none scores at least `cutoff` (0 to 1;
    0 always names one, unless `choices` is empty)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = DEFAULT_CUTOFF) -> str:
    """"; did you mean 'x'?" for the `nearest` of `choices`, or "" when none is close: the tail of an
    error message that names `name` (`f"unknown preset {name!r}{did_you_mean(name, PRESETS)}"`)."""
    match = nearest(name, choices, cutoff)
    return f"; did you mean {match!r}?" if match is not None else ""
