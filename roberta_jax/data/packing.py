"""FULL-SENTENCES packing (Liu et al. 2019, section 4.2): documents → rows of exactly L tokens.

The format, with W = L - 2 content slots per row:

1. The documents d_0 … d_{n-1} (token ids without special tokens, in corpus order) are joined
   into one stream with a single `</s>` between consecutive documents and none after the last:

       S = d_0 </s> d_1 </s> … </s> d_{n-1}

2. S is cut into consecutive windows of W tokens and row r is `<s> S[r*W:(r+1)*W] </s>`. A row
   may span several documents; a document boundary inside a row is the separator `</s>` of
   step 1. A separator can land in the first or last content slot (`<s></s> d …` or
   `… d </s></s>`); it is kept, so the rows are a pure function of S.
3. The tail, the last len(S) % W tokens, is either dropped (`drop_remainder=True`) or becomes a
   last row `<s> tail </s> <pad> … <pad>` whose first `last_row_length = len(tail) + 2` tokens
   are real (the attention mask is 1 there and 0 on the padding).

Inverse (`unpack_documents`): drop column 0 and column L-1 of every row (and the `</s>` and
padding after the tail in a padded last row), concatenate → S, split S at `</s>` → the documents,
in order; nothing is lost or duplicated except the dropped tail. The split is exact as long as no
document holds the `</s>` id as an ordinary token.

Everything is vectorised numpy over the flat token array (nanoGPT style); documents are
processed in chunks of about `chunk_tokens`, so memory stays bounded when the rows are written
to a memory-mapped `.npy` file.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import uuid

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """Packed rows and what is needed to tell real tokens from padding.

    Attributes:
      input_ids: int32 [num_rows, max_seq_length] (a numpy array or a read-only memmap).
      last_row_length: number of real tokens in the last row; equal to max_seq_length unless
        the last row is padded.
      pad_id: the padding id filling the rest of a padded last row.
      padded_rows: any row may end in padding (DOC-SENTENCES rows, `doc_packing`); its real tokens
        are the non-padding ones.
    """

    input_ids: np.ndarray
    last_row_length: int
    pad_id: int
    padded_rows: bool = False

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_seq_length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def has_padding(self) -> bool:
        return self.padded_rows or self.last_row_length < self.max_seq_length

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows with the given indices, [len(rows), max_seq_length]."""
        return self.input_ids[rows]

    def row_lengths(self, rows: np.ndarray) -> np.ndarray:
        """Real-token counts, int32 [len(rows)], of the rows with the given indices."""
        rows = np.asarray(rows)
        if self.padded_rows:
            return (np.asarray(self.input_ids[rows]) != self.pad_id).sum(axis=-1, dtype=np.int32)
        lengths = np.full(rows.shape, self.max_seq_length, np.int32)
        lengths[rows == self.num_rows - 1] = self.last_row_length
        return lengths


def packed_shape(num_stream_tokens: int, max_seq_length: int, drop_remainder: bool) -> tuple[int, int]:
    """(num_rows, last_row_length) of packing a stream S of `num_stream_tokens` tokens."""
    width = _content_width(max_seq_length)
    num_full, tail = divmod(num_stream_tokens, width)
    if tail and not drop_remainder:
        return num_full + 1, tail + 2
    return num_full, max_seq_length


def pack_documents(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    max_seq_length: int = 512,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    drop_remainder: bool = True,
    doc_indices: np.ndarray | None = None,
    out_path: str | None = None,
    chunk_tokens: int = 1 << 24,
) -> PackedRows:
    """Packs documents into FULL-SENTENCES rows (format in the module docstring).

    Args:
      tokens: int [num_tokens], all documents back to back, no special tokens.
      doc_offsets: int [num_documents + 1]; document i is tokens[doc_offsets[i]:doc_offsets[i+1]].
      max_seq_length: L, the length of every row.
      bos_id, eos_id, pad_id: `<s>`, `</s>` (also the document separator) and `<pad>` ids.
      drop_remainder: drop the last partial row instead of padding it.
      doc_indices: ascending document indices to pack (e.g. the training split); all if None.
      out_path: write the rows to this `.npy` file (memory-mapped, written under a temporary
        name and renamed when complete) instead of keeping them in memory.
      chunk_tokens: documents are processed in chunks of about this many tokens.

    Returns:
      PackedRows with input_ids int32 [num_rows, L].
    """
    width = _content_width(max_seq_length)
    doc_offsets = np.asarray(doc_offsets, np.int64)
    if doc_indices is None:
        doc_indices = np.arange(len(doc_offsets) - 1)
    doc_indices = np.asarray(doc_indices, np.int64)
    lengths = doc_offsets[doc_indices + 1] - doc_offsets[doc_indices]
    stream_len = _stream_length(lengths)
    num_rows, last_row_length = packed_shape(stream_len, max_seq_length, drop_remainder)
    if num_rows == 0:
        raise ValueError(
            f"{len(doc_indices)} documents make {stream_len} tokens, fewer than one row of "
            f"{width} content tokens (max_seq_length={max_seq_length}); add data, lower "
            "max_seq_length, or pass drop_remainder=False to keep a padded row."
        )
    tmp_path = None if out_path is None else f"{out_path}.tmp-{uuid.uuid4().hex}.npy"
    rows = _framed_rows(num_rows, max_seq_length, last_row_length, bos_id, eos_id, pad_id, tmp_path)
    limit = num_rows * width if drop_remainder else stream_len
    _write_documents(rows, tokens, doc_offsets, doc_indices, lengths, eos_id, limit, chunk_tokens)
    if out_path is None:
        return PackedRows(rows, last_row_length, pad_id)
    rows.flush()
    del rows
    os.replace(tmp_path, out_path)
    return PackedRows(np.load(out_path, mmap_mode="r"), last_row_length, pad_id)


def _framed_rows(
    num_rows: int, max_seq_length: int, last_row_length: int, bos_id: int, eos_id: int, pad_id: int,
    path: str | None,
) -> np.ndarray:
    """int32 [num_rows, max_seq_length] holding only the frame: `<s>` first, `</s>` last, and the
    padding of a short last row; the content slots are left to `_write_documents`. In memory, or
    a memory-mapped `.npy` file at `path`."""
    if path is None:
        rows = np.empty((num_rows, max_seq_length), np.int32)
    else:
        rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(num_rows, max_seq_length))
    rows[:, 0] = bos_id
    rows[:, -1] = eos_id
    if last_row_length < max_seq_length:
        rows[-1, last_row_length - 1] = eos_id
        rows[-1, last_row_length:] = pad_id
    return rows


def _write_documents(
    rows: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray, doc_indices: np.ndarray, lengths: np.ndarray,
    sep: int, limit: int, chunk_tokens: int,
) -> None:
    """Writes the first `limit` tokens of the stream S of the documents `doc_indices` (`lengths`
    tokens each, joined by `sep`) into the content slots of `rows`, a chunk of whole documents of
    about `chunk_tokens` tokens at a time."""
    width = rows.shape[1] - 2
    stream_len = _stream_length(lengths)
    # Chunks of whole documents; chunk k > 0 starts with the separator before its first document.
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(chunk_tokens, stream_len, chunk_tokens)) + 1
    bounds = np.unique(np.clip(np.concatenate([[0], cuts, [len(doc_indices)]]), 0, len(doc_indices)))
    position = 0
    for first, last in itertools.pairwise(bounds):
        if position >= limit:
            break
        segment = _joined(tokens, doc_offsets, doc_indices[first:last], lengths[first:last], sep, first > 0)
        segment = segment[: limit - position]
        _write_stream(rows, position, segment, width)
        position += len(segment)


def segment_ids(rows: np.ndarray, separator: int) -> np.ndarray:
    """int32 [num_rows, L]: each token's document index within its packed row, counting the
    separators before it, so `<s> a a </s> b </s>` -> `0 0 0 0 1 1` (a separator ends the document
    before it; the row's closing `</s>` belongs to its last document)."""
    rows = np.asarray(rows)
    after_separator = np.cumsum(rows == separator, axis=1, dtype=np.int32)
    return np.pad(after_separator[:, :-1], ((0, 0), (1, 0)))


def unpack_documents(packed: PackedRows, eos_id: int) -> list[np.ndarray]:
    """Inverse of `pack_documents`: the documents, in order (the last one cut if the tail was dropped)."""
    stream = np.asarray(packed.input_ids[:, 1:-1]).reshape(-1)
    stream = stream[: stream.size - (packed.max_seq_length - packed.last_row_length)]
    return _split_at(stream, eos_id)


def _split_at(stream: np.ndarray, sep: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(stream == sep)
    pieces = np.split(stream, cuts)
    return [pieces[0]] + [p[1:] for p in pieces[1:]]


def _stream_length(lengths: np.ndarray) -> int:
    """len(S) of documents of `lengths` tokens: their tokens and one `</s>` between each two."""
    return int(lengths.sum()) + max(len(lengths) - 1, 0)


def _content_width(max_seq_length: int) -> int:
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length}; a row needs <s>, </s> and at least one token.")
    return max_seq_length - 2


def _joined(tokens, doc_offsets, docs, lengths, sep, leading_sep):
    """The documents `docs` joined by `sep` (preceded by one `sep` if leading_sep), int32 [n]."""
    total = int(lengths.sum())
    starts_in_segment = np.cumsum(lengths) - lengths
    if len(docs) and docs[-1] - docs[0] == len(docs) - 1:  # contiguous documents: a slice
        values = tokens[doc_offsets[docs[0]] : doc_offsets[docs[-1] + 1]]
    else:
        source = np.repeat(doc_offsets[docs] - starts_in_segment, lengths) + np.arange(total)
        values = tokens[source]
    lead = int(leading_sep)
    segment = np.full(total + len(docs) - 1 + lead, sep, np.int32)
    segment[np.arange(total) + np.repeat(np.arange(len(docs)) + lead, lengths)] = values
    return segment


def _write_stream(rows: np.ndarray, position: int, segment: np.ndarray, width: int) -> None:
    """Writes stream tokens [position, position + len(segment)) into the rows' content slots."""
    done = 0
    row, col = divmod(position, width)
    if col:  # finish a partly filled row
        n = min(width - col, len(segment))
        rows[row, 1 + col : 1 + col + n] = segment[:n]
        done, row = n, row + 1
    full = (len(segment) - done) // width
    if full:
        rows[row : row + full, 1:-1] = segment[done : done + full * width].reshape(full, width)
        done, row = done + full * width, row + full
    if done < len(segment):
        rows[row, 1 : 1 + len(segment) - done] = segment[done:]


class StreamPacker:
    """`pack_documents(..., drop_remainder=False)` one batch of documents at a time: the same rows, handed to
    `emit` (int32 [rows, L]) as they fill, so only one row's worth of the stream is ever held.

        packer = StreamPacker(512, bos_id=0, eos_id=2, pad_id=1, emit=writer.write)
        for ids in batches: packer.add(ids)   # ids: non-empty token lists, in corpus order
        last_row_length = packer.finish()
    """

    def __init__(self, max_seq_length: int, *, bos_id: int, eos_id: int, pad_id: int, emit):
        self.width = _content_width(max_seq_length)
        self.max_seq_length, self.bos_id, self.eos_id, self.pad_id, self.emit = (
            max_seq_length, bos_id, eos_id, pad_id, emit)
        self.carry = np.zeros(0, np.int32)  # the stream's tokens not yet in a row: fewer than `width`
        self.started = False
        self.num_rows = 0

    def add(self, documents: list) -> None:
        """Appends non-empty documents (token id lists) to the stream and emits every row they fill."""
        if not documents:
            return
        lengths = np.fromiter(map(len, documents), np.int64, len(documents))
        tokens = np.fromiter(itertools.chain.from_iterable(documents), np.int32, int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        segment = _joined(tokens, offsets, np.arange(len(documents)), lengths, self.eos_id, self.started)
        self.started = True
        stream = np.concatenate([self.carry, segment])
        full = len(stream) // self.width
        if full:
            self._emit(stream[: full * self.width].reshape(full, self.width))
        self.carry = stream[full * self.width :]

    def finish(self) -> int:
        """Emits the padded last row of the stream's tail, if any; returns `last_row_length`."""
        if not len(self.carry):
            return self.max_seq_length
        row = np.full((1, self.max_seq_length), self.pad_id, np.int32)
        row[0, 0], row[0, 1 : 1 + len(self.carry)], row[0, 1 + len(self.carry)] = (
            self.bos_id, self.carry, self.eos_id)
        self.emit(row)
        self.num_rows += 1
        length, self.carry = len(self.carry) + 2, self.carry[:0]
        return length

    def _emit(self, content: np.ndarray) -> None:
        rows = np.empty((len(content), self.max_seq_length), np.int32)
        rows[:, 0], rows[:, 1:-1], rows[:, -1] = self.bos_id, content, self.eos_id
        self.emit(rows)
        self.num_rows += len(rows)
