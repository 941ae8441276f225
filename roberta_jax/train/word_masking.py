"""Whole-word and span (SpanBERT) choice of MLM targets, in jnp inside the jitted step.

Words. A byte-level BPE piece starts a word when it begins with the space marker "Ġ" (or is a
line break piece beginning with "Ċ"); so does the first piece after a special token, after a piece
that ends in a line break "Ċ", and the first piece of a row. `word_tables(vocab)` computes the two
per-id flags on the host, once; the step looks them up per token.

Choice. The row's words are grouped into units: one word per unit (`whole_word`), or consecutive
spans of words whose lengths are drawn from the geometric distribution p=`span_p` clipped at
`span_max_words` (SpanBERT, Joshi et al. 2020), tiling the row. Units are visited in a random
order and taken word by word while the row's token budget (round(15% of its candidates), at most
K) allows: a unit stops at its first word that does not fit, so no word is ever cut, and the
remaining budget goes to later units. A span is not started next to an already chosen span, so
chosen spans never merge into a longer one. The result is close to the budget (short of it only by
less than one word) and always whole words.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SPACE, NEWLINE = "\u0120", "\u010a"  # byte-level BPE's markers of " " and "\n" ("Ġ", "Ċ")


class WordTables(NamedTuple):
    """Per-id flags, bool [vocab_size]: `starts` (a piece that begins a word), `breaks` (a piece that
    ends in a line break: the next piece begins a word)."""

    starts: np.ndarray
    breaks: np.ndarray


def word_tables(vocab: dict[str, int], vocab_size: int) -> WordTables:
    """The `WordTables` of a byte-level BPE vocabulary {piece: id} (`tokenizer.get_vocab()`)."""
    starts, breaks = np.zeros(vocab_size, bool), np.zeros(vocab_size, bool)
    for piece, i in vocab.items():
        if i < vocab_size:
            starts[i] = piece.startswith((SPACE, NEWLINE))
            breaks[i] = piece.endswith(NEWLINE)
    return WordTables(starts, breaks)


def span_length_probabilities(p: float, max_words: int) -> np.ndarray:
    """P(length = 1..max_words) of the geometric distribution p clipped (renormalised) at max_words."""
    pmf = p * (1 - p) ** np.arange(max_words)
    return pmf / pmf.sum()


def choose_words(
    rng: jax.Array, input_ids: jax.Array, candidates: jax.Array, budget: jax.Array, tables: WordTables, *,
    span_p: float | None = None, span_max_words: int = 10,
) -> jax.Array:
    """bool [B, L]: the chosen tokens, whole words only, at most `budget` [B] per row.

    `candidates` bool [B, L] marks the tokens that may be chosen; `span_p` None chooses single
    words, else spans of geometric(span_p) words clipped at `span_max_words`.
    """
    length = input_ids.shape[1]
    word, num_words = _word_index(input_ids, candidates, tables)
    rows = jnp.arange(input_ids.shape[0])[:, None]
    word_len = jnp.zeros(input_ids.shape, jnp.int32).at[rows, jnp.where(candidates, word, length)].add(1, mode="drop")
    unit_rng, order_rng = jax.random.split(rng)
    if span_p is None:
        unit = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
    else:
        logits = jnp.log(span_length_probabilities(span_p, span_max_words))
        lengths = jax.random.categorical(unit_rng, logits, shape=input_ids.shape) + 1  # span u's words
        ends = jnp.cumsum(lengths, axis=-1)
        unit = jax.vmap(lambda e: jnp.searchsorted(e, jnp.arange(length), side="right"))(ends)
    # Visit units in a random order, the words of a unit consecutively and in order; absent words last.
    unit_rank = jnp.argsort(jax.random.uniform(order_rng, input_ids.shape), axis=-1).argsort(axis=-1)
    key = jnp.take_along_axis(unit_rank, unit, axis=-1) * length + jnp.arange(length)
    key = jnp.where(jnp.arange(length) < num_words[:, None], key, length * length)
    order = jnp.argsort(key, axis=-1)
    taken = _take_in_order(order, unit, word_len, num_words, budget, separate_units=span_p is not None)
    return candidates & jnp.take_along_axis(taken, word, axis=-1)


def _word_index(input_ids, candidates, tables: WordTables):
    """(word int32 [B, L]: the index of each candidate token's word in its row, num_words int32 [B])."""
    after = jnp.pad(candidates[:, :-1] & ~jnp.asarray(tables.breaks)[input_ids[:, :-1]], ((0, 0), (1, 0)))
    starts = candidates & (jnp.asarray(tables.starts)[input_ids] | ~after)
    word = jnp.cumsum(starts, axis=-1, dtype=jnp.int32) - 1
    return jnp.maximum(word, 0), starts.sum(axis=-1, dtype=jnp.int32)


def _take_in_order(order, unit, word_len, num_words, budget, separate_units: bool):
    """bool [B, L] over word indices: the words taken visiting `order`, a unit stopping at its first
    word that does not fit the `budget`; with `separate_units`, a unit next to a taken one is skipped."""
    batch, length = order.shape
    rows = jnp.arange(batch)

    def visit(carry, r):
        count, taken, unit_taken, unit_open = carry
        w = order[:, r]
        u = unit[rows, w]
        first = (w == 0) | (unit[rows, jnp.maximum(w - 1, 0)] != u)
        neighbour = unit_taken[rows, jnp.maximum(u - 1, 0)] & (u > 0) | unit_taken[rows, jnp.minimum(u + 1, length - 1)]
        opened = jnp.where(first, ~(separate_units & neighbour), unit_open[rows, u])
        n = word_len[rows, w]
        take = opened & (w < num_words) & (count + n <= budget)
        return (count + take * n, taken.at[rows, w].set(take), unit_taken.at[rows, u].max(take),
                unit_open.at[rows, u].set(take)), None

    init = (jnp.zeros(batch, jnp.int32), jnp.zeros((batch, length), bool), jnp.zeros((batch, length), bool),
            jnp.zeros((batch, length), bool))
    (_, taken, _, _), _ = jax.lax.scan(visit, init, jnp.arange(length))
    return taken
