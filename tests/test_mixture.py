"""MixtureBatches: slot shares binomial around the weights, one global batch whatever the host count, exact resume
mid-epoch, each source walking its rows in per-epoch permutations."""

import json
import logging
import zlib

import numpy as np
import pytest

from roberta_jax.data.mixture import MixtureBatches
from roberta_jax.data.packing import PackedRows

PAD = 1
WEIGHTS = {"books": 0.5, "news": 0.3, "wiki": 0.2}
SIZES = {"books": 37, "news": 23, "wiki": 11}  # small: the streams roll over into new epochs within a few steps
CODE = {"books": 1000, "news": 2000, "wiki": 3000}


def coded_rows(name, num_rows, length=4):
    """Rows whose tokens are CODE[name] + their row index, so a batch shows which source and row each slot holds."""
    rows = np.repeat(CODE[name] + np.arange(num_rows, dtype=np.int32)[:, None], length, axis=1)
    return PackedRows(rows, length, PAD)


def mixture(batch=16, seed=3, weights=WEIGHTS, **kwargs):
    sources = {name: coded_rows(name, n) for name, n in SIZES.items()}
    return MixtureBatches(sources, weights, batch, seed=seed, **{"process_index": 0, "process_count": 1, **kwargs})


def take(batches, n):
    return [next(batches)["input_ids"][:, 0] for _ in range(n)]


def test_slot_shares_are_binomial_around_the_weights():
    steps, batch = 1000, 16
    slots = np.concatenate(take(mixture(batch), steps))
    n = steps * batch
    for name, weight in WEIGHTS.items():
        count = int(((slots >= CODE[name]) & (slots < CODE[name] + 1000)).sum())
        sigma = np.sqrt(n * weight * (1 - weight))
        assert abs(count - n * weight) < 4 * sigma, (name, count, n * weight, sigma)
    # The draw is by weight, not a fixed pattern: per-step counts of books vary.
    per_step = [int((s < 2000).sum()) for s in take(mixture(batch), 50)]
    assert len(set(per_step)) > 3


def test_every_host_count_slices_the_same_global_batches():
    whole = take(mixture(16), 30)
    for hosts in (2, 4, 8):
        parts = [take(mixture(16, process_index=p, process_count=hosts), 30) for p in range(hosts)]
        for step in range(30):
            np.testing.assert_array_equal(np.concatenate([part[step] for part in parts]), whole[step])


def test_each_source_walks_its_epochs_in_permuted_order():
    seed = 3
    slots = np.concatenate(take(mixture(16, seed=seed), 40))
    for name, n in SIZES.items():
        rows = slots[(slots >= CODE[name]) & (slots < CODE[name] + 1000)] - CODE[name]
        epochs = [rows[e * n:(e + 1) * n] for e in range(len(rows) // n)]
        assert len(epochs) >= 3
        for e, visited in enumerate(epochs):
            # every row once per epoch, in the order the module docstring states
            want = np.random.default_rng([seed, 1, zlib.crc32(name.encode()), e]).permutation(n)
            np.testing.assert_array_equal(visited, want)
        assert not np.array_equal(epochs[0], epochs[1])  # a new permutation each epoch


@pytest.mark.parametrize("read_ahead", [0, 3])
def test_resume_from_a_saved_state_mid_epoch_continues_exactly(read_ahead):
    reference = take(mixture(16), 25)
    for stop in (1, 4, 9, 17):
        first = mixture(16, read_ahead=read_ahead)
        take(first, stop)
        state = json.loads(json.dumps(first.get_state()))
        assert state["step"] == stop and sum(state["consumed"].values()) == 16 * stop
        resumed = mixture(16, read_ahead=read_ahead)
        take(resumed, 2)  # batches read ahead from another position are dropped by set_state
        resumed.set_state(state)
        for got, want in zip(take(resumed, 25 - stop), reference[stop:]):
            np.testing.assert_array_equal(got, want)
        first.close()
        resumed.close()


def test_resume_with_other_weights_is_logged_and_other_data_refused(caplog):
    first = mixture(16)
    take(first, 5)
    state = first.get_state()
    reweighted = mixture(16, weights={"books": 0.2, "news": 0.3, "wiki": 0.5})
    with caplog.at_level(logging.WARNING):
        reweighted.set_state(state)
    assert "mixture weights changed on resume" in caplog.text
    assert reweighted.consumed == state["consumed"]
    with pytest.raises(ValueError, match="seed=3, this run has seed=4"):
        mixture(16, seed=4).set_state(state)
    smaller = MixtureBatches({name: coded_rows(name, n - 1) for name, n in SIZES.items()}, WEIGHTS, 16, seed=3,
                             process_index=0, process_count=1)
    with pytest.raises(ValueError, match="source books: the mixture state was saved with 37 rows"):
        smaller.set_state(state)


def test_padding_masks_and_bad_weights():
    sources = {"a": PackedRows(np.full((3, 4), 7, np.int32), 2, PAD), "b": coded_rows("books", 5)}
    batch = next(MixtureBatches(sources, {"a": 1, "b": 1}, 64, seed=0, process_index=0, process_count=1))
    from_a = batch["input_ids"][:, 0] == 7
    # a's last row (index 2, two real tokens) is masked past its length; every other row is whole
    lengths = batch["attention_mask"].sum(1)
    assert set(lengths[~from_a]) == {4} and set(lengths[from_a]) == {2, 4}
    with pytest.raises(ValueError, match="positive weight"):
        MixtureBatches(sources, {"a": 1, "b": 0}, 8, process_index=0, process_count=1)
