"""Pretraining batches from a weighted mixture of named sources (RoBERTa's five corpora; levanter's
`train_weights`, SeqIO's mixtures):

    batches = MixtureBatches({"books": books_rows, "wiki": wiki_rows}, {"books": 0.3, "wiki": 0.7}, 256, seed=0)
    batch = next(batches)                       # {"input_ids": int32 [256 / process_count, L], ...}
    checkpoint_extra = batches.get_state()      # {"step": 1, "consumed": {"books": 71, "wiki": 185}, ...}

The rules, all functions of the seed and the step, so the batches are the same for any host count:

- Slots. Global batch `step` has B slots; their sources are drawn i.i.d. with probability weight / sum of the
  weights from `default_rng([seed, 0, step])`. A source's share of the batches is binomial around its weight.
- Rows. Each source walks its own rows in epochs, apart from the others: its row stream is epoch 0's order, then
  epoch 1's, ...; epoch e's order is `default_rng([seed, 1, zlib.crc32(name), epoch]).permutation(num_rows)`.
  The slots of a source in batch `step`, left to right, take the next rows of its stream.
- Hosts. Process p of P takes slots [p * B/P, (p+1) * B/P) of the ONE global batch and reads only their rows.

State: `{"step", "consumed": {name: rows of its stream used}, "seed", "weights", "num_rows"}`. Resuming with other
weights is allowed (the next draws use the new ones; logged); another seed or another row count of a source is
an error, since the saved positions would not mean the same rows. A source new to the state starts at its row 0.
"""

from __future__ import annotations

import concurrent.futures
import logging
import zlib
from collections.abc import Mapping

import jax
import numpy as np

from roberta_jax.data.batches import PackedRows, gather_rows
from roberta_jax.data.shards import ShardedRows

log = logging.getLogger(__name__)


def slot_sources(seed: int, step: int, weights: np.ndarray, batch_size: int) -> np.ndarray:
    """int64 [batch_size]: the source index of each slot of global batch `step`, drawn by `weights` (normalized)."""
    return np.random.default_rng([seed, 0, step]).choice(len(weights), size=batch_size, p=weights / weights.sum())


def epoch_order(seed: int, name: str, epoch: int, num_rows: int) -> np.ndarray:
    """int64 [num_rows]: the order source `name` visits its rows in `epoch`."""
    return np.random.default_rng([seed, 1, zlib.crc32(name.encode("utf-8")), epoch]).permutation(num_rows)


class MixtureBatches:
    """Host-local batches of a mixture (rules in the module docstring), with the keys of `batches.BatchIterator`'s
    (`gather_rows`): `input_ids` int32 [B_local, L], `attention_mask` when a source's rows can hold padding,
    `segment_ids` with `segment_separator`. Runs forever; resumable.

    Args:
      sources: {name: `PackedRows` or `shards.ShardedRows`}, all of one row length.
      weights: {name: weight > 0} for every source.
      global_batch_size: B, slots per step over all hosts; a multiple of process_count.
      seed: the draws of the slots and the epochs' orders.
      read_ahead: gather this many of the next batches in background threads (rows read from disk); 0 gathers
        each batch when it is asked for. The batches and the state are the same either way.
      process_index, process_count: this host and the host count; default to jax's.
    """

    def __init__(self, sources: Mapping[str, PackedRows | ShardedRows], weights: Mapping[str, float],
                 global_batch_size: int, *, seed: int = 0, segment_separator: int | None = None, read_ahead: int = 0,
                 process_index: int | None = None, process_count: int | None = None):
        self.names = sorted(sources)  # the draws index this order: the config's order of the sources is no input
        if set(weights) != set(sources) or not all(w > 0 for w in weights.values()):
            raise ValueError(f"weights {dict(weights)} must give every source of {self.names} a positive weight")
        lengths = {name: rows.max_seq_length for name, rows in sources.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the sources' rows differ in length: {lengths}")
        empty = [name for name in self.names if not sources[name].num_rows]
        if empty:
            raise ValueError(f"source {empty[0]} has no rows")
        self.sources, self.seed, self.segment_separator = dict(sources), seed, segment_separator
        self.weights = {name: float(weights[name]) for name in self.names}
        self.global_batch_size = global_batch_size
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of "
                             f"process_count={self.process_count}.")
        self.local_batch_size = global_batch_size // self.process_count
        self.emits_mask = any(rows.has_padding for rows in sources.values())
        self.step = 0
        self.consumed = dict.fromkeys(self.names, 0)
        self._orders: dict[tuple[str, int], np.ndarray] = {}
        self.read_ahead = read_ahead
        self._pool = concurrent.futures.ThreadPoolExecutor(read_ahead) if read_ahead else None
        self._ahead: dict[tuple, concurrent.futures.Future] = {}  # by (step, consumed) of the batch

    def get_state(self) -> dict:
        """A JSON-able position: the next batch is global batch `step`."""
        return {"step": self.step, "consumed": dict(self.consumed), "seed": self.seed, "weights": dict(self.weights),
                "num_rows": {name: self.sources[name].num_rows for name in self.names}}

    def set_state(self, state: dict) -> None:
        """Resumes at a `get_state()` position; the next batches equal an uninterrupted run's (with the same
        weights)."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"mixture state was saved with seed={state['seed']}, this run has seed={self.seed}; "
                             "the saved positions do not apply to another seed.")
        for name, rows in state.get("num_rows", {}).items():
            if name in self.sources and rows != self.sources[name].num_rows:
                raise ValueError(f"source {name}: the mixture state was saved with {rows} rows, this run has "
                                 f"{self.sources[name].num_rows}; the saved position does not apply to other data.")
        if state.get("weights", self.weights) != self.weights:
            log.warning("mixture weights changed on resume: %s -> %s; the batches from step %d on are drawn with the "
                        "new ones", state["weights"], self.weights, state["step"])
        gone = sorted(set(state["consumed"]) - set(self.names))
        if gone:
            log.warning("sources %s of the saved mixture are not in this run", gone)
        self.step = int(state["step"])
        self.consumed = {name: int(state["consumed"].get(name, 0)) for name in self.names}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        plan, following = self._plan(self.step, self.consumed)
        if self._pool is None:
            batch = self._gather(plan)
        else:  # the plans of the next batches are cheap draws; their reading goes to the pool
            keys, plans, consumed = [], {}, self.consumed
            for step in range(self.step, self.step + self.read_ahead + 1):
                keys.append((step, tuple(consumed.values())))
                plans[keys[-1]], consumed = self._plan(step, consumed)
            # Batches gathered for other positions (before a `set_state`) are dropped.
            self._ahead = {k: self._ahead.get(k) or self._pool.submit(self._gather, plans[k]) for k in keys}
            batch = self._ahead.pop(keys[0]).result()
        self.step, self.consumed = self.step + 1, following
        return batch

    def close(self) -> None:
        """Waits for the batches being read ahead and stops the read-ahead threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._ahead = None, {}

    def _plan(self, step: int, consumed: dict[str, int]) -> tuple[dict, dict[str, int]]:
        """({name: (this host's slots of it, their rows)} of global batch `step` read from the stream positions
        `consumed`, and the positions after it)."""
        slots = slot_sources(self.seed, step, np.array([self.weights[n] for n in self.names]), self.global_batch_size)
        start = self.process_index * self.local_batch_size
        plan, following = {}, dict(consumed)
        for s, name in enumerate(self.names):
            chosen = np.flatnonzero(slots == s)  # this source's slots of the global batch, left to right
            rows = self._stream_rows(name, consumed[name], len(chosen))
            mine = (chosen >= start) & (chosen < start + self.local_batch_size)
            following[name] += len(chosen)
            if mine.any():
                plan[name] = (chosen[mine] - start, rows[mine])
        return plan, following

    def _gather(self, plan: dict) -> dict[str, np.ndarray]:
        """The host-local batch of a `_plan`: each source's rows gathered (`gather_rows`) into its slots."""
        batch = {}
        for name, (slots, rows) in plan.items():
            part = gather_rows(self.sources[name], rows, len(rows), emits_mask=self.emits_mask,
                               segment_separator=self.segment_separator)
            for key, value in part.items():
                batch.setdefault(key, np.empty((self.local_batch_size, *value.shape[1:]), value.dtype))[slots] = value
        return batch

    def _stream_rows(self, name: str, position: int, count: int) -> np.ndarray:
        """Row indices [count] of source `name`'s stream from `position` on (across epochs where it rolls over)."""
        num_rows = self.sources[name].num_rows
        where = np.arange(position, position + count)
        out = np.empty(count, np.int64)
        for epoch in np.unique(where // num_rows):
            inside = where // num_rows == epoch
            out[inside] = self._order(name, int(epoch))[where[inside] % num_rows]
        return out

    def _order(self, name: str, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of `name`, kept with the one before (a batch, or the batches read ahead, may
        straddle the two)."""
        if (name, epoch) not in self._orders:
            for key in [k for k in self._orders if k[0] == name and abs(k[1] - epoch) > 1]:
                del self._orders[key]
            self._orders[name, epoch] = epoch_order(self.seed, name, epoch, self.sources[name].num_rows)
        return self._orders[name, epoch]
