"""Pretraining input: corpus → packed rows → host-local batches → global jax.Arrays.

    data = build_pretraining_data("corpus/*.txt", tokenizer, eval_fraction=0.01, cache_dir="/tmp/c")
    batches = BatchIterator(data.train, global_batch_size=256, seed=0)
    for step, batch in zip(range(num_steps), batches):
        batch = to_global(batch, mesh)          # {"input_ids": int32 [256, 512]} sharded
        ...                                      # masking happens in the jitted step
    checkpoint_extra = batches.get_state()      # {"epoch": 0, "position": 123, ...}

Reading and tokenizing: `data_sources`; the row formats: `packing`, `doc_packing`, `pairs` (sentences:
`sentences`); MLM masking: `masking`.

Batches. Each epoch visits the rows in the order `default_rng([seed, epoch]).permutation`.
Global batch b of an epoch is rows `order[b*G:(b+1)*G]`; process p of P takes the p-th of its
P equal slices, so hosts read disjoint rows that together make the global batch, and the
sequence of global batches does not depend on P. An incomplete final global batch is dropped
(`drop_remainder=True`, training) or filled with all-padding rows (evaluation; those rows have
attention_mask 0 and hold no masking candidates). The iterator state is
`{"epoch", "position"}` (the next batch), plus `seed`, `num_rows` and `global_batch_size`,
checked on restore.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roberta_jax.data.doc_packing import pack_document_windows
from roberta_jax.data.encoders import TokenizerInfo, resolve_tokenizer
from roberta_jax.data.packing import PackedRows, pack_documents, packed_shape, segment_ids
from roberta_jax.data.pairs import pack_pairs
from roberta_jax.data.sentences import document_sentences, piece_bytes
from roberta_jax.data.shards import ShardedRows
from roberta_jax.data.sources import TokenizedCorpus, split_documents, tokenize_corpus
from roberta_jax.suggest import did_you_mean

INPUT_FORMATS = ("full_sentences", "doc_sentences", "segment_pair", "sentence_pair")
PAIR_FORMATS = ("segment_pair", "sentence_pair")  # rows of one pair each, with next-sentence labels
NO_LABEL = -100  # the nsp_labels of filler rows: no pair, no loss (HF's ignore index)

__all__ = ["BatchIterator", "PretrainingData", "RowBatches", "build_pretraining_data", "to_global"]


@dataclasses.dataclass(frozen=True)
class PretrainingData:
    """Packed training rows, optional packed eval rows, and counts for the log."""

    train: PackedRows | ShardedRows
    eval: PackedRows | ShardedRows | None
    stats: dict[str, int | bool]


def build_pretraining_data(
    train_sources: str | Sequence[str],
    tokenizer: Any,
    *,
    eval_sources: str | Sequence[str] | None = None,
    eval_fraction: float = 0.0,
    split_seed: int = 0,
    max_seq_length: int = 512,
    drop_remainder: bool = True,
    cache_dir: str | None = None,
    num_proc: int = 1,
    input_format: str = "full_sentences",
    **source_kwargs: Any,
) -> PretrainingData:
    """Tokenizes (or reads from cache) and packs the training and eval corpora.

    Args:
      train_sources: files, directories, globs, or a Hub name (with `format="hub"`).
      tokenizer: anything `encoders.resolve_tokenizer` accepts.
      eval_sources: held-out files, read like `train_sources`.
      eval_fraction: else, hold out this fraction of the training documents, chosen by
        `split_seed`, before packing (so no document is in both).
      max_seq_length: L, the length of every row.
      drop_remainder: drop the last partial training row instead of padding it. Eval rows
        always keep theirs, padded, so every held-out token is evaluated.
      cache_dir: caches token ids and packed rows (memory-mapped `.npy`); None: no caching.
      num_proc: tokenizer processes for `Dataset.map`.
      input_format: one of `INPUT_FORMATS`, rows by `packing` (cached), `doc_packing` or `pairs` (from split_seed).
      **source_kwargs: `format`, `text_field`, `doc_split`, `hub_config`, `hub_split`,
        `batch_size` of `data_sources.tokenize_corpus`.
    """
    _check_choices(eval_sources, eval_fraction, input_format)
    tok = resolve_tokenizer(tokenizer)
    tokenized = functools.partial(tokenize_corpus, tokenizer=tok, num_proc=num_proc, cache_dir=cache_dir,
                                  **source_kwargs)
    train_corpus = tokenized(train_sources)
    split = split_documents(train_corpus.num_documents, eval_fraction, split_seed) if eval_fraction else None
    train_docs, eval_docs = split or (None, None)
    pieces = piece_bytes(tokenizer) if input_format in PAIR_FORMATS else None
    pack = functools.partial(_pack, tok=tok, max_seq_length=max_seq_length, cache_dir=cache_dir, seed=split_seed,
                             input_format=input_format, pieces=pieces)
    train_rows = pack(train_corpus, train_docs, drop=drop_remainder)
    stats: dict[str, int | bool] = {
        "train/documents": train_corpus.num_documents if train_docs is None else len(train_docs),
        "train/empty_documents": train_corpus.num_empty_documents,
        "train/tokens": _num_tokens(train_corpus, train_docs),
        "train/rows": train_rows.num_rows,
        "train/from_cache": train_corpus.from_cache,
    }
    eval_corpus = train_corpus if eval_docs is not None else None
    if eval_sources is not None:
        eval_corpus = tokenized(eval_sources)
        stats["eval/empty_documents"] = eval_corpus.num_empty_documents
    eval_rows = None
    if eval_corpus is not None:
        eval_rows = pack(eval_corpus, eval_docs, drop=False)
        stats["eval/documents"] = eval_corpus.num_documents if eval_docs is None else len(eval_docs)
        stats["eval/tokens"] = _num_tokens(eval_corpus, eval_docs)
        stats["eval/rows"] = eval_rows.num_rows
    return PretrainingData(train_rows, eval_rows, stats)


def _check_choices(eval_sources, eval_fraction: float, input_format: str) -> None:
    if eval_sources is not None and eval_fraction:
        raise ValueError("pass eval_sources or eval_fraction, not both.")
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"data.input_format={input_format!r}{did_you_mean(input_format, INPUT_FORMATS)}; "
                         f"expected one of {INPUT_FORMATS}.")


def _pack(
    corpus: TokenizedCorpus, doc_indices: np.ndarray | None, *, tok: TokenizerInfo, max_seq_length: int, drop: bool,
    cache_dir: str | None, input_format: str, pieces: list[bytes] | None = None, seed: int = 0,
) -> PackedRows:
    """The documents `doc_indices` (all if None) of `corpus` packed into rows of `max_seq_length`;
    FULL-SENTENCES rows with `cache_dir` are kept in a `.npy` beside the corpus's cached tokens and read
    back from there. Pair formats: sentences from the tokenizer's `pieces`, pairs drawn from `seed`."""
    kwargs = {"max_seq_length": max_seq_length, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id}
    if input_format in PAIR_FORMATS:
        sentences = document_sentences(corpus.tokens, corpus.doc_offsets, pieces, doc_indices)
        return pack_pairs(corpus.tokens, sentences, single_sentences=input_format == "sentence_pair", seed=seed,
                          **kwargs)
    kwargs["doc_indices"] = doc_indices
    if input_format == "doc_sentences":
        return pack_document_windows(corpus.tokens, corpus.doc_offsets, **kwargs)
    kwargs["drop_remainder"] = drop
    if cache_dir is None:
        return pack_documents(corpus.tokens, corpus.doc_offsets, **kwargs)
    selection = "all" if doc_indices is None else hashlib.sha256(doc_indices.tobytes()).hexdigest()[:16]
    name = f"rows-{selection}-L{max_seq_length}-{'drop' if drop else 'pad'}-{tok.bos_id}.{tok.eos_id}.{tok.pad_id}.npy"
    path = os.path.join(cache_dir, f"tokenized-{corpus.fingerprint}", name)
    cached = _cached_rows(path, corpus, doc_indices, max_seq_length, drop, tok.pad_id)
    if cached is not None:
        return cached
    return pack_documents(corpus.tokens, corpus.doc_offsets, out_path=path, **kwargs)


def _cached_rows(
    path: str, corpus: TokenizedCorpus, doc_indices: np.ndarray | None, max_seq_length: int, drop: bool, pad_id: int
) -> PackedRows | None:
    """The rows `_pack` stored at `path` (memory-mapped), or None when there are none of the expected shape."""
    if not os.path.exists(path):
        return None
    num_docs = corpus.num_documents if doc_indices is None else len(doc_indices)
    stream_length = _num_tokens(corpus, doc_indices) + num_docs - 1
    num_rows, last_row_length = packed_shape(stream_length, max_seq_length, drop)
    rows = np.load(path, mmap_mode="r")
    if rows.shape != (num_rows, max_seq_length):
        return None
    return PackedRows(rows, last_row_length, pad_id)


def _num_tokens(corpus: TokenizedCorpus, doc_indices: np.ndarray | None) -> int:
    if doc_indices is None:
        return corpus.num_tokens
    return int((corpus.doc_offsets[doc_indices + 1] - corpus.doc_offsets[doc_indices]).sum())


class RowBatches:
    """The batching rules of the module docstring over `num_rows` rows of any kind: epoch order, the
    global batch and this host's share of it, the end of an epoch, and a resumable state. Subclasses
    build a batch from row indices with `_gather(indices)`: the indices of this host's share of the
    next global batch, fewer than `local_batch_size` in an incomplete final batch (kept when
    `drop_remainder=False`). `BatchIterator` gathers packed token rows; fine-tuning gathers
    feature arrays (`finetune_lib.FeatureBatches`).

    Args:
      num_rows: how many rows there are.
      global_batch_size: G, rows per step over all hosts; a multiple of process_count.
      seed: shuffle seed; epoch e visits rows in `default_rng([seed, e]).permutation` order.
      shuffle: False visits rows in order (evaluation).
      num_epochs: stop after this many epochs; None runs forever.
      drop_remainder: drop an incomplete final global batch of an epoch, else emit it (filled by
        `_gather`).
      process_index, process_count: this host and the host count; default to jax's.
    """

    def __init__(
        self,
        num_rows: int,
        global_batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.num_rows = num_rows
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not a multiple of process_count={self.process_count}."
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} is outside [0, {self.process_count}).")
        self.local_batch_size = global_batch_size // self.process_count
        full, self.remainder = divmod(num_rows, global_batch_size)
        self.steps_per_epoch = full + int(bool(self.remainder) and not drop_remainder)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{num_rows} rows make no complete global batch of {global_batch_size}; "
                "use a smaller batch, more data, or drop_remainder=False."
            )
        self.epoch = 0
        self.position = 0
        self._order_epoch, self._order = None, None

    def get_state(self) -> dict[str, int]:
        """A JSON-able position: the next batch is `position` of `epoch`."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_rows": self.num_rows,
            "global_batch_size": self.global_batch_size,
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Resumes at a `get_state()` position; the next batches equal an uninterrupted run's."""
        mine = self.get_state()
        for key in ("seed", "num_rows", "global_batch_size"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"iterator state was saved with {key}={state[key]}, this iterator has {mine[key]}; "
                    "the saved position does not apply to different data or batching."
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, position = self._following(self.epoch, self.position)
        self.epoch, self.position = epoch, position + 1
        return self._batch(epoch, position)

    def _following(self, epoch: int, position: int) -> tuple[int, int]:
        """(epoch, position) of the batch at `position` of `epoch`, rolled over into the next epoch at the end
        of one; StopIteration after the last epoch."""
        if position >= self.steps_per_epoch:
            epoch, position = epoch + 1, 0
        if self.num_epochs is not None and epoch >= self.num_epochs:
            raise StopIteration
        return epoch, position

    def _batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        return self._gather(self._indices(epoch, position))

    def _indices(self, epoch: int, position: int) -> np.ndarray:
        """This host's rows of global batch `position` of `epoch`."""
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        return self._epoch_order(epoch)[start : start + self.local_batch_size]

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = self.num_rows
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order


class BatchIterator(RowBatches):
    """Host-local batches `{"input_ids": int32 [B_local, L]}` (+ `"attention_mask"` when rows
    can hold padding; + `"nsp_labels"` int32 [B_local] of `pairs.PairRows`, `NO_LABEL` on filler rows)
    of packed rows, B_local = global_batch_size / process_count; resumable.
    An incomplete final batch (`drop_remainder=False`) is filled with all-padding rows.

    Args:
      rows: `PackedRows` in memory, or the `shards.ShardedRows` of a prepared directory.
      read_ahead: gather this many of the next batches in background threads (rows read from disk);
        0 gathers each batch when it is asked for. The batches and the state are the same either way.
      emit_row_ids: add `"row_ids"` and `"epoch"`, int32 [B_local]: each row's index in `rows` and the
        epoch it is read in (static masking's keys).
      segment_separator: the `</s>` id: add `"segment_ids"` int32 [B_local, L], each token's document
        within its row (`packing.segment_ids`), for attention that does not cross documents.
      **kwargs: `RowBatches`'s.
    """

    def __init__(self, rows: PackedRows | ShardedRows, global_batch_size: int, *, read_ahead: int = 0,
                 emit_row_ids: bool = False, segment_separator: int | None = None, **kwargs):
        super().__init__(rows.num_rows, global_batch_size, **kwargs)
        self.rows = rows
        self.emit_row_ids = emit_row_ids
        self.segment_separator = segment_separator
        self.emits_mask = rows.has_padding or (bool(self.remainder) and not self.drop_remainder)
        self.read_ahead = read_ahead
        self._pool = concurrent.futures.ThreadPoolExecutor(read_ahead) if read_ahead else None
        self._ahead: dict[tuple[int, int], concurrent.futures.Future] = {}

    def _batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        if self._pool is None:
            return super()._batch(epoch, position)
        keys = [(epoch, position)]
        with contextlib.suppress(StopIteration):
            while len(keys) <= self.read_ahead:
                keys.append(self._following(keys[-1][0], keys[-1][1] + 1))
        # Batches gathered for other positions (before a `set_state`) are dropped.
        self._ahead = {k: self._ahead.get(k) or self._pool.submit(self._gather, self._indices(*k), k[0])
                       for k in keys}
        return self._ahead.pop((epoch, position)).result()

    def close(self) -> None:
        """Waits for the batches being read ahead and stops the read-ahead threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._ahead = None, {}

    def _gather(self, indices: np.ndarray, epoch: int | None = None) -> dict[str, np.ndarray]:
        """The batch of `indices`, read in `epoch` (the current one unless read ahead)."""
        num_real = len(indices)
        batch = gather_rows(self.rows, indices, self.local_batch_size, emits_mask=self.emits_mask,
                            segment_separator=self.segment_separator)
        if self.emit_row_ids:  # static masking keys its masks by (row, epoch); filler rows get row 0
            batch["row_ids"] = np.zeros(self.local_batch_size, np.int32)
            batch["row_ids"][:num_real] = indices
            batch["epoch"] = np.full(self.local_batch_size, self.epoch if epoch is None else epoch, np.int32)
        return batch


def gather_rows(rows: PackedRows | ShardedRows, indices: np.ndarray, batch_size: int, *, emits_mask: bool,
                segment_separator: int | None = None) -> dict[str, np.ndarray]:
    """`{"input_ids": int32 [batch_size, L]}` of `rows[indices]`, filled past `len(indices)` with all-padding rows;
    with `"attention_mask"` (`emits_mask`), `"nsp_labels"` (pair rows; `NO_LABEL` on filler rows) and
    `"segment_ids"` (with `segment_separator`), as `BatchIterator` documents them."""
    num_real = len(indices)
    length = rows.max_seq_length
    input_ids = np.full((batch_size, length), rows.pad_id, np.int32)
    input_ids[:num_real] = rows.take(indices)
    batch = {"input_ids": input_ids}
    if emits_mask:
        lengths = np.zeros(batch_size, np.int32)
        lengths[:num_real] = rows.row_lengths(indices)
        batch["attention_mask"] = (np.arange(length) < lengths[:, None]).astype(np.int32)
    if getattr(rows, "nsp_labels", None) is not None:
        batch["nsp_labels"] = np.full(batch_size, NO_LABEL, np.int32)
        batch["nsp_labels"][:num_real] = rows.nsp_labels[indices]
    if segment_separator is not None:
        batch["segment_ids"] = segment_ids(input_ids, segment_separator)
    return batch


def to_global(
    batch: dict[str, np.ndarray], mesh: Mesh, batch_axes: str | Sequence[str] = ("data", "fsdp")
) -> dict[str, jax.Array]:
    """Host-local batches → global jax.Arrays whose dim 0 is sharded over `batch_axes` of `mesh`.

    Every host calls this with its own `BatchIterator` batch; the global batch is
    process_count times larger.
    """
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"batch axes {unknown} are not axes of the mesh {mesh.axis_names}.")
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
