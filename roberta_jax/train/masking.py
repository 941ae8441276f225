"""Dynamic MLM masking in pure jnp, run inside the jitted train step.

Per sequence, exactly `round(mlm_probability * n)` of its n candidate tokens (everything that is
not a special or padding id) are chosen, capped at K = `max_predictions`, by ranking uniform
random scores with `lax.top_k`, so the count is exact and every shape is static. Of the chosen
tokens, a Bernoulli draw per token sends `mask_ratio` to `<mask>`, `random_ratio` to a token drawn
uniformly from the non-special vocabulary, and leaves the rest unchanged (BERT's 80/10/10).

The loss is computed only at the chosen positions: `positions`, `labels` and `weights` are
[batch, K], valid slots first in ascending position order, then padding slots (position 0,
label 0, weight 0).

Randomness: the caller passes the key. For training derive it from the step,
`masked_rng(seed, step) = jax.random.fold_in(jax.random.key(seed), step)`, so every step draws a
fresh mask (dynamic masking) and a resumed run masks exactly as an uninterrupted one. For
evaluation, `mask_eval_batch` uses `fold_in(key(seed), batch_index)` so that every evaluation
masks the same eval batch the same way and eval losses are comparable across steps.

Static masking (the paper's table 1, `masking.static_copies=N`): each row has N fixed masks, keyed by
`static_masked_rngs(seed, row, epoch % N)` and applied row by row with `mask_rows`, so the mask of a
row depends only on (seed, row, copy): the same in every epoch that uses that copy and after a restart.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from roberta_jax.train.word_masking import WordTables, choose_words


class MaskedBatch(NamedTuple):
    """The corrupted inputs and the prediction targets.

    Attributes:
      input_ids: int32 [batch, length], the inputs with chosen tokens replaced.
      positions: int32 [batch, K], chosen positions (ascending), then 0 in padding slots.
      labels: int32 [batch, K], the original ids at `positions`, 0 in padding slots.
      weights: float32 [batch, K], 1 for a real prediction, 0 for a padding slot.
    """

    input_ids: jax.Array
    positions: jax.Array
    labels: jax.Array
    weights: jax.Array


def default_max_predictions(length: int, mlm_probability: float = 0.15) -> int:
    """K: ceil(length * mlm_probability) rounded up to a multiple of 8 (80 for 512 at 15%)."""
    return max(8, -(-math.ceil(length * mlm_probability) // 8) * 8)


def masked_rng(seed: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The masking key of a training step: `fold_in(key(seed), step)`. Jittable."""
    return jax.random.fold_in(jax.random.key(seed), step)


def mask_tokens(
    rng: jax.Array,
    input_ids: jax.Array,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mlm_probability: float = 0.15,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
    max_predictions: int | None = None,
    whole_word: bool = False,
    span: bool = False,
    span_p: float = 0.2,
    span_max_words: int = 10,
    word_tables: WordTables | None = None,
) -> MaskedBatch:
    """Chooses and corrupts MLM targets in a batch of sequences.

    Args:
      rng: a PRNG key; see the module docstring for how to derive it.
      input_ids: int [batch, length].
      mask_token_id: the `<mask>` id.
      vocab_size: random replacements are drawn from [0, vocab_size) minus `special_ids` and
        `<mask>` (add ids the tokenizer never produces to `special_ids` to exclude them too).
      special_ids: ids never chosen, e.g. (bos, pad, eos, unk); static Python ints.
      mlm_probability: fraction of candidate tokens chosen per sequence.
      mask_ratio, random_ratio: probabilities that a chosen token becomes `<mask>` or a random
        token; it stays unchanged with probability 1 - mask_ratio - random_ratio.
      max_predictions: K, the static number of prediction slots per sequence; defaults to
        `default_max_predictions(length, mlm_probability)`.
      whole_word: choose whole words (`word_masking`), at the same token budget.
      span: choose spans of whole words, geometric(`span_p`) words long clipped at `span_max_words`.
      word_tables: `word_masking.word_tables(vocab)`, needed by `whole_word` and `span`.

    Returns:
      MaskedBatch (shapes in its docstring).
    """
    if not 0.0 <= mask_ratio + random_ratio <= 1.0 or min(mask_ratio, random_ratio) < 0.0:
        raise ValueError(f"mask_ratio={mask_ratio} and random_ratio={random_ratio} must be >= 0 with sum <= 1.")
    return _mask_tokens(
        rng,
        jnp.asarray(input_ids),
        mask_token_id=int(mask_token_id),
        vocab_size=int(vocab_size),
        special_ids=tuple(sorted({int(i) for i in special_ids} | {int(mask_token_id)})),
        mlm_probability=float(mlm_probability),
        mask_ratio=float(mask_ratio),
        random_ratio=float(random_ratio),
        max_predictions=max_predictions,
        span_p=float(span_p) if span else None,
        span_max_words=int(span_max_words),
        word_tables=_checked_tables(word_tables, whole_word or span),
    )


def _checked_tables(tables: WordTables | None, needed: bool) -> WordTables | None:
    if not needed:
        return None
    if tables is None:
        raise ValueError("masking.whole_word and masking.span need word_tables (word_masking.word_tables(vocab)).")
    return WordTables(*(jnp.asarray(t) for t in tables))


# Jitted so that eager callers (evaluation, notebooks) also run one compiled program.
@functools.partial(
    jax.jit,
    static_argnames=(
        "mask_token_id",
        "vocab_size",
        "special_ids",
        "mlm_probability",
        "mask_ratio",
        "random_ratio",
        "max_predictions",
        "span_p",
        "span_max_words",
    ),
)
def _mask_tokens(
    rng,
    input_ids,
    *,
    mask_token_id,
    vocab_size,
    special_ids,
    mlm_probability,
    mask_ratio,
    random_ratio,
    max_predictions,
    span_p,
    span_max_words,
    word_tables,
) -> MaskedBatch:
    batch, length = input_ids.shape
    k = max_predictions or default_max_predictions(length, mlm_probability)
    k = min(k, length)
    excluded = list(special_ids)
    score_rng, action_rng, token_rng = jax.random.split(rng, 3)

    candidates = ~jnp.isin(input_ids, jnp.asarray(excluded, input_ids.dtype))
    num_candidates = candidates.sum(axis=-1)
    num_chosen = jnp.minimum(jnp.round(num_candidates * mlm_probability).astype(jnp.int32), k)
    if word_tables is None:
        scores = jnp.where(candidates, jax.random.uniform(score_rng, input_ids.shape), -1.0)
    else:  # the chosen words' tokens outrank every other; at most num_chosen of them
        chosen = choose_words(score_rng, input_ids, candidates, num_chosen, word_tables, span_p=span_p,
                              span_max_words=span_max_words)
        num_chosen = chosen.sum(axis=-1)
        scores = jnp.where(chosen, 1.0, -1.0)
    _, top = jax.lax.top_k(scores, k)  # [batch, k], highest score first
    valid = jnp.arange(k) < num_chosen[:, None]
    # Valid positions ascending, padding slots (marked `length`) last.
    sorted_positions = jnp.sort(jnp.where(valid, top, length), axis=-1)
    valid = sorted_positions < length
    positions = jnp.where(valid, sorted_positions, 0).astype(jnp.int32)
    labels = jnp.where(valid, jnp.take_along_axis(input_ids, positions, axis=-1), 0).astype(jnp.int32)

    action = jax.random.uniform(action_rng, (batch, k))
    random_tokens = _uniform_excluding(token_rng, (batch, k), vocab_size, excluded)
    replacement = jnp.where(
        action < mask_ratio,
        mask_token_id,
        jnp.where(action < mask_ratio + random_ratio, random_tokens, labels),
    ).astype(input_ids.dtype)
    corrupted = input_ids.at[jnp.arange(batch)[:, None], sorted_positions].set(replacement, mode="drop")
    return MaskedBatch(corrupted, positions, labels, valid.astype(jnp.float32))


def static_masked_rngs(seed: int | jax.Array, row_ids: jax.Array, epoch: jax.Array, copies: int) -> jax.Array:
    """Static masking's keys [B]: row r in epoch e gets copy e % copies of its masks, key
    fold_in(fold_in(key(seed), r), e % copies), whatever the step or the batch it lands in. Jittable."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r, e: jax.random.fold_in(jax.random.fold_in(base, r), e % copies))(row_ids, epoch)


def mask_rows(mask_fn, rngs: jax.Array, input_ids: jax.Array) -> MaskedBatch:
    """One key per row (rngs [B]): row i is masked as `mask_fn(rngs[i], input_ids[i:i+1])`, where
    `mask_fn(rng, input_ids) -> MaskedBatch` is `mask_tokens` with its keyword arguments bound."""
    masked = jax.vmap(lambda k, ids: mask_fn(k, ids[None]))(rngs, input_ids)
    return jax.tree.map(lambda a: a[:, 0], masked)


def mask_eval_batch(
    input_ids: jax.Array,
    batch_index: int | jax.Array,
    *,
    seed: int | jax.Array,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    **mask_kwargs,
) -> MaskedBatch:
    """Masks eval batch number `batch_index` with the fixed key `fold_in(key(seed), batch_index)`.

    The same (seed, batch_index, batch) gives the same mask at every evaluation, so eval losses
    are comparable across training steps. Use a seed different from the training one.
    """
    return mask_tokens(
        jax.random.fold_in(jax.random.key(seed), batch_index),
        input_ids,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
        **mask_kwargs,
    )


def _uniform_excluding(rng: jax.Array, shape: tuple[int, ...], vocab_size: int, excluded: list[int]) -> jax.Array:
    """Uniform ids in [0, vocab_size) minus `excluded` (sorted): draw an index, then skip past exclusions."""
    excluded = [i for i in excluded if 0 <= i < vocab_size]
    ids = jax.random.randint(rng, shape, 0, vocab_size - len(excluded), dtype=jnp.int32)
    for skipped in excluded:  # ascending, so each shift may push the id past a later exclusion
        ids = ids + (ids >= skipped)
    return ids
