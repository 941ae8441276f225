"""Tests for dynamic MLM masking."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.train.masking import default_max_predictions, mask_eval_batch, mask_tokens, masked_rng

BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
SPECIAL = (BOS, PAD, EOS, UNK)
VOCAB = 1000


def batch(num_rows, length, seed=0, min_length=8):
    """Rows `<s> tokens </s> <pad>…` of random lengths; tokens in [5, VOCAB)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (num_rows, length)).astype(np.int32)
    lengths = rng.integers(min_length, length + 1, num_rows)
    ids[:, 0] = BOS
    ids[np.arange(num_rows), lengths - 1] = EOS
    ids[np.arange(length) >= lengths[:, None]] = PAD
    return ids


mask = functools.partial(mask_tokens, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)


@pytest.fixture(scope="module")
def million():
    ids = batch(2048, 512)
    return ids, jax.tree.map(np.asarray, mask(masked_rng(0, 7), ids))


def test_rates_over_a_million_tokens(million):
    ids, out = million
    candidates = ids >= 5
    chosen = out.weights > 0
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.005
    new = np.take_along_axis(out.input_ids, out.positions, axis=1)[chosen]
    labels = out.labels[chosen]
    masked, kept = new == MASK, new == labels
    randomized = ~masked & ~kept
    # A random replacement equals the original with probability 1/995; count those as random.
    assert abs(masked.mean() - 0.8) < 0.01
    assert abs(randomized.mean() + kept.mean() - 0.2) < 0.01
    assert abs(randomized.mean() - 0.1 * (1 - 1 / 995)) < 0.01
    assert not np.isin(new[randomized], SPECIAL + (MASK,)).any()


def test_only_chosen_candidates_change_and_labels_are_the_originals(million):
    ids, out = million
    chosen = out.weights > 0
    np.testing.assert_array_equal(out.labels[chosen], np.take_along_axis(ids, out.positions, axis=1)[chosen])
    assert np.isin(np.take_along_axis(ids, out.positions, axis=1)[chosen], SPECIAL, invert=True).all()
    changed = out.input_ids != ids
    assert not changed[ids < 5].any()  # special and padding tokens never touched
    selected = np.zeros_like(changed)
    np.put_along_axis(selected, out.positions, chosen, axis=1)
    assert not (changed & ~selected).any()


def test_exact_count_static_shapes_and_slot_layout(million):
    ids, out = million
    k = default_max_predictions(512)
    assert k == 80
    assert out.positions.shape == out.labels.shape == out.weights.shape == (2048, k)
    assert out.positions.dtype == out.labels.dtype == np.int32 and out.weights.dtype == np.float32
    num_candidates = (ids >= 5).sum(axis=1)
    np.testing.assert_array_equal(
        out.weights.sum(axis=1), np.minimum(np.round(np.float32(0.15) * num_candidates.astype(np.float32)), k)
    )
    chosen = out.weights > 0
    assert (np.diff(chosen.astype(int), axis=1) <= 0).all()  # real slots first
    assert (out.positions[~chosen] == 0).all() and (out.labels[~chosen] == 0).all()
    for row, c in zip(out.positions[:50], chosen[:50]):
        assert (np.diff(row[c]) > 0).all()  # ascending, no duplicates


def test_same_step_same_mask_other_step_other_mask():
    ids = batch(16, 128, seed=1)
    a, b = mask(masked_rng(3, 10), ids), mask(masked_rng(3, 10), ids)
    c, d = mask(masked_rng(3, 11), ids), mask(masked_rng(4, 10), ids)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.positions, c.positions) and not np.array_equal(a.positions, d.positions)


def test_jitted_equals_eager_and_traces_the_step():
    ids = batch(16, 128, seed=2)
    kwargs = {"mask_token_id": MASK, "vocab_size": VOCAB, "special_ids": SPECIAL}
    eager = mask_tokens(masked_rng(0, 5), jnp.asarray(ids), **kwargs)

    @jax.jit
    def step(seed, step, input_ids):  # the train step's use: rng derived inside the compiled program
        return mask_tokens(masked_rng(seed, step), input_ids, **kwargs)

    for x, y in zip(eager, step(0, 5, ids)):
        np.testing.assert_array_equal(x, y)


def test_random_tokens_cover_the_non_special_vocabulary():
    ids = batch(256, 128, seed=3)
    out = mask_tokens(
        masked_rng(0, 0),
        ids,
        mask_token_id=7,
        vocab_size=12,
        special_ids=(0, 1, 2, 9),
        mask_ratio=0.0,
        random_ratio=1.0,
    )
    chosen = np.asarray(out.weights) > 0
    new = np.take_along_axis(np.asarray(out.input_ids), np.asarray(out.positions), axis=1)[chosen]
    assert set(np.unique(new)) == {3, 4, 5, 6, 8, 10, 11}
    counts = np.bincount(new, minlength=12)[[3, 4, 5, 6, 8, 10, 11]]
    assert counts.min() > 0.8 * counts.mean()


def test_max_predictions_caps_the_count():
    ids = batch(16, 128, seed=4, min_length=128)
    out = mask_tokens(
        masked_rng(0, 0), ids, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, max_predictions=8
    )
    assert out.positions.shape == (16, 8)
    np.testing.assert_array_equal(np.asarray(out.weights).sum(axis=1), 8)


def test_all_padding_rows_have_no_predictions():
    ids = np.full((16, 128), PAD, np.int32)
    out = mask(masked_rng(0, 0), ids)
    assert float(np.asarray(out.weights).sum()) == 0
    np.testing.assert_array_equal(out.input_ids, ids)


def test_eval_masks_are_fixed_per_batch_index():
    ids = batch(16, 128, seed=5)
    kwargs = {"seed": 123, "mask_token_id": MASK, "vocab_size": VOCAB, "special_ids": SPECIAL}
    first, again, other = (mask_eval_batch(ids, i, **kwargs) for i in (0, 0, 1))
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first.positions, other.positions)
    for x, y in zip(
        first,
        mask_tokens(
            jax.random.fold_in(jax.random.key(123), 0), ids, **{k: v for k, v in kwargs.items() if k != "seed"}
        ),
    ):
        np.testing.assert_array_equal(x, y)


def test_bad_ratios_are_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        mask_tokens(
            masked_rng(0, 0),
            batch(2, 16),
            mask_token_id=MASK,
            vocab_size=VOCAB,
            special_ids=SPECIAL,
            mask_ratio=0.9,
            random_ratio=0.2,
        )
