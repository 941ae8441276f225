"""Whole-word, span and static masking: whole words only, SpanBERT's span lengths, the 15% budget, and
static masks fixed by (row, copy) across epochs and restarts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.data.batches import BatchIterator
from roberta_jax.data.packing import PackedRows
from roberta_jax.train import objectives
from roberta_jax.train.masking import mask_tokens, masked_rng
from roberta_jax.train.word_masking import NEWLINE, SPACE, span_length_probabilities, word_tables

BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
SPECIAL = (BOS, PAD, EOS, UNK)
VOCAB = 1000


def piece(i: int) -> str:
    """A made-up byte-level BPE vocabulary: every third id begins with the space marker, id 5 is a line
    break, id 6 a piece ending in one; the rest continue a word."""
    if i < 5:
        return ["<s>", "<pad>", "</s>", "<unk>", "<mask>"][i]
    return {5: NEWLINE, 6: "x" + NEWLINE}.get(i, (SPACE if i % 3 == 0 else "") + f"p{i}")


TABLES = word_tables({piece(i): i for i in range(VOCAB)}, VOCAB)
mask = functools.partial(mask_tokens, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, word_tables=TABLES)


def rows(num_rows, length, seed=0):
    """`<s> tokens </s> <pad>…` of random lengths (at least half the row), an `<unk>` here and there."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (num_rows, length)).astype(np.int32)
    ids[rng.random(ids.shape) < 0.01] = UNK
    lengths = rng.integers(length // 2, length + 1, num_rows)
    ids[:, 0] = BOS
    ids[np.arange(num_rows), lengths - 1] = EOS
    ids[np.arange(length) >= lengths[:, None]] = PAD
    return ids


def host_words(row):
    """The words of a row by the module's rule, written plainly: lists of positions."""
    words, previous = [], None
    for i, t in enumerate(row):
        if t in SPECIAL:
            previous = None
            continue
        p = piece(int(t))
        if previous is None or p.startswith((SPACE, NEWLINE)) or piece(int(previous)).endswith(NEWLINE):
            words.append([])
        words[-1].append(i)
        previous = t
    return words


def chosen_tokens(out, shape):
    chosen = np.zeros(shape, bool)
    np.put_along_axis(chosen, np.asarray(out.positions), np.asarray(out.weights) > 0, axis=1)
    return chosen


@pytest.fixture(scope="module")
def corpus():
    ids = rows(800, 512)
    return ids, [host_words(r) for r in ids]


@pytest.mark.parametrize("option", ["whole_word", "span"])
def test_no_word_is_partially_masked_and_the_budget_is_15_percent(corpus, option):
    ids, words = corpus
    assert sum(map(len, words)) > 100_000
    out = jax.tree.map(np.asarray, mask(masked_rng(0, 3), ids, **{option: True}))
    chosen = chosen_tokens(out, ids.shape)
    for row, row_words in zip(chosen, words):
        for w in row_words:
            assert row[w].all() or not row[w].any()
    candidates = ~np.isin(ids, SPECIAL)
    assert not (chosen & ~candidates).any()
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.005
    assert (out.weights.sum(1) <= np.round(np.float32(0.15) * candidates.sum(1))).all()
    # 80/10/10 per chosen token, as with single tokens.
    new = np.take_along_axis(out.input_ids, out.positions, axis=1)[out.weights > 0]
    assert abs((new == MASK).mean() - 0.8) < 0.01
    assert abs((new == out.labels[out.weights > 0]).mean() - 0.1) < 0.01


def test_span_lengths_follow_the_clipped_geometric():
    # One token per word (every piece starts with the space marker) so runs of chosen tokens are spans.
    ids = np.random.default_rng(1).integers(5, VOCAB // 3, (64, 2048)).astype(np.int32) * 3
    ids[:, 0], ids[:, -1] = BOS, EOS
    out = mask(masked_rng(0, 0), ids, span=True, max_predictions=320)
    chosen = chosen_tokens(out, ids.shape).astype(np.int8)
    edges = np.diff(np.pad(chosen, ((0, 0), (1, 1))), axis=1)
    runs = np.flatnonzero(edges.ravel() == -1) - np.flatnonzero(edges.ravel() == 1)
    expected = (np.arange(1, 11) * span_length_probabilities(0.2, 10)).sum()
    assert abs(runs.mean() / expected - 1) < 0.05, (runs.mean(), expected)
    assert runs.max() <= 10 and len(runs) > 3000
    assert abs(chosen.sum() / (64 * 2046) - 0.15) < 0.005


def test_word_tables_of_byte_level_pieces():
    tables = word_tables({"Ġthe": 0, "the": 1, "Ċ": 2, "ingĊ": 3, "ĊĊ": 4, "Ġ": 5}, 6)
    np.testing.assert_array_equal(tables.starts, [True, False, True, False, True, True])
    np.testing.assert_array_equal(tables.breaks, [False, False, True, True, True, False])


def test_word_options_need_the_tables():
    with pytest.raises(ValueError, match="need word_tables"):
        mask_tokens(masked_rng(0, 0), rows(2, 16), mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                    whole_word=True)


@pytest.fixture(scope="module")
def static_masks():
    """Mask positions of every (epoch, row) over 6 epochs of 3 static copies, read through BatchIterator."""
    data = PackedRows(rows(12, 64, seed=2), 64, PAD)
    prepare = jax.jit(objectives.mlm_prepare(functools.partial(mask, whole_word=False), static_copies=3, seed=5))

    def masks(batches, num_batches):
        out = {}
        for _ in range(num_batches):
            batch = next(batches)
            epoch = int(batch["epoch"][0])
            prepared = prepare(masked_rng(0, len(out)), {k: jnp.asarray(v) for k, v in batch.items()})
            for r, positions in zip(batch["row_ids"], np.asarray(prepared["positions"])):
                out[epoch, int(r)] = positions
        return out

    full = masks(BatchIterator(data, 4, seed=0, emit_row_ids=True), 18)
    restarted = BatchIterator(data, 4, seed=0, emit_row_ids=True)
    restarted.set_state({"epoch": 4, "position": 1})
    return full, masks(restarted, 5)


def test_static_masks_cycle_over_epochs_and_survive_restarts(static_masks):
    full, restarted = static_masks
    assert len(full) == 6 * 12
    for (epoch, row), positions in full.items():
        if epoch >= 3:
            np.testing.assert_array_equal(positions, full[epoch - 3, row])  # copy epoch % 3 again
        else:
            assert not np.array_equal(positions, full[(epoch + 1) % 3, row])
    assert len(restarted) == 5 * 4
    for key, positions in restarted.items():
        np.testing.assert_array_equal(positions, full[key])


def test_static_masking_keeps_the_15_percent_budget():
    ids = rows(512, 128, seed=3)
    batch = {"input_ids": jnp.asarray(ids), "row_ids": jnp.arange(512), "epoch": jnp.full(512, 7)}
    out = jax.jit(objectives.mlm_prepare(functools.partial(mask, whole_word=False), static_copies=10))(
        masked_rng(0, 0), batch)
    candidates = ~np.isin(ids, SPECIAL)
    assert abs(float(out["weights"].sum()) / candidates.sum() - 0.15) < 0.005
