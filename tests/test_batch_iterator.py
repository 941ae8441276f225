"""BatchIterator: resumable state, seed/epoch shuffles, host shares, the eval pass, global arrays."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from roberta_jax.data.batches import BatchIterator, to_global
from roberta_jax.data.packing import PackedRows

PAD = 1


def numbered_rows(num_rows, length=4, last_row_length=None):
    """Rows whose tokens are their own row index, so a batch shows which rows it holds."""
    rows = np.repeat(np.arange(num_rows, dtype=np.int32)[:, None], length, axis=1)
    return PackedRows(rows, last_row_length or length, PAD)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_resumed_iterator_yields_what_an_uninterrupted_one_would():
    rows = numbered_rows(50)
    reference = take(BatchIterator(rows, 8, seed=5, process_count=1, process_index=0), 20)  # crosses epochs
    for stop in (0, 3, 6, 7, 13):
        first = BatchIterator(rows, 8, seed=5, process_count=1, process_index=0)
        take(first, stop)
        state = json.loads(json.dumps(first.get_state()))
        resumed = BatchIterator(rows, 8, seed=5, process_count=1, process_index=0)
        resumed.set_state(state)
        for got, want in zip(take(resumed, 20 - stop), reference[stop:]):
            np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    assert BatchIterator(rows, 8).steps_per_epoch == 6
    with pytest.raises(ValueError, match="global_batch_size=8"):
        BatchIterator(rows, 10, seed=5).set_state(state)


def test_shuffle_is_deterministic_by_seed_and_epoch():
    rows = numbered_rows(64)
    epoch = lambda it: np.concatenate([b["input_ids"][:, 0] for b in take(it, 8)])
    a, b = BatchIterator(rows, 8, seed=1, process_count=1), BatchIterator(rows, 8, seed=1, process_count=1)
    a0, a1 = epoch(a), epoch(a)
    np.testing.assert_array_equal(a0, epoch(b))
    assert sorted(a0) == sorted(a1) == list(range(64)) and not np.array_equal(a0, a1)
    assert not np.array_equal(a0, epoch(BatchIterator(rows, 8, seed=2, process_count=1)))
    np.testing.assert_array_equal(epoch(BatchIterator(rows, 8, shuffle=False, process_count=1)), np.arange(64))


def test_host_shards_are_disjoint_and_complete():
    rows = numbered_rows(48)
    whole = BatchIterator(rows, 8, seed=0, process_count=1, process_index=0)
    hosts = [BatchIterator(rows, 8, seed=0, process_count=2, process_index=p) for p in range(2)]
    seen = []
    for _ in range(6):
        parts = [next(h)["input_ids"][:, 0] for h in hosts]
        assert all(len(p) == 4 for p in parts) and not set(parts[0]) & set(parts[1])
        np.testing.assert_array_equal(np.concatenate(parts), next(whole)["input_ids"][:, 0])
        seen.extend(np.concatenate(parts))
    assert sorted(seen) == list(range(48))
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(rows, 9, process_count=2, process_index=0)


def test_eval_pass_visits_every_row_once_and_pads_the_last_batch():
    rows = numbered_rows(11, length=4, last_row_length=3)
    for p in range(2):
        batches = list(
            BatchIterator(rows, 4, shuffle=False, num_epochs=1, drop_remainder=False, process_count=2, process_index=p)
        )
        assert len(batches) == 3 and all(set(b) == {"input_ids", "attention_mask"} for b in batches)
        ids_ = np.concatenate([b["input_ids"] for b in batches])
        mask = np.concatenate([b["attention_mask"] for b in batches])
        real = {0: [0, 1, 4, 5, 8, 9], 1: [2, 3, 6, 7, 10]}[p]
        np.testing.assert_array_equal(ids_[mask[:, 0] == 1, 0], real)
        assert (ids_[mask.sum(1) == 0] == PAD).all()
        if p == 1:
            np.testing.assert_array_equal(mask[4], [1, 1, 1, 0])  # row 10, the padded last row


def test_to_global_builds_a_sharded_batch():
    devices = np.array(jax.devices()).reshape(-1, 1)
    mesh = Mesh(devices, ("data", "fsdp"))
    batch = next(BatchIterator(numbered_rows(16), 2 * len(devices.flat), seed=0))
    arrays = to_global(batch, mesh)
    assert arrays["input_ids"].shape == batch["input_ids"].shape
    assert arrays["input_ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(arrays["input_ids"]), batch["input_ids"])
    with pytest.raises(ValueError, match="not axes of the mesh"):
        to_global(batch, mesh, ("batch",))
