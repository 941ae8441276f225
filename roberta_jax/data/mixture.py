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
      process_index, process_count: this host and the host count; default to jax's.
    """

    def __init__(self, sources: Mapping[str, PackedRows | ShardedRows], weights: Mapping[str, float],
                 global_batch_size: int, *, seed: int = 0, segment_separator: int | None = None,
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
        self._orders: dict[str, tuple[int, np.ndarray]] = {}

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
        slots = slot_sources(self.seed, self.step, np.array([self.weights[n] for n in self.names]),
                             self.global_batch_size)
        start = self.process_index * self.local_batch_size
        batch = None
        for s, name in enumerate(self.names):
            chosen = np.flatnonzero(slots == s)  # this source's slots of the global batch, left to right
            rows = self._stream_rows(name, self.consumed[name], len(chosen))
            mine = (chosen >= start) & (chosen < start + self.local_batch_size)
            self.consumed[name] += len(chosen)
            if mine.any():
                part = gather_rows(self.sources[name], rows[mine], int(mine.sum()), emits_mask=self.emits_mask,
                                   segment_separator=self.segment_separator)
                batch = batch or {k: np.empty((self.local_batch_size, *v.shape[1:]), v.dtype) for k, v in part.items()}
                for key, value in part.items():
                    batch[key][chosen[mine] - start] = value
        self.step += 1
        return batch

    def close(self) -> None:
        """Nothing is read ahead; `BatchIterator`'s interface."""

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
        cached = self._orders.get(name)
        if cached is None or cached[0] != epoch:
            self._orders[name] = cached = (epoch, epoch_order(self.seed, name, epoch, self.sources[name].num_rows))
        return cached[1]
