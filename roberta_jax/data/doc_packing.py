"""DOC-SENTENCES packing (Liu et al. 2019, section 4.2): inputs that never cross a document, packed
into rows of exactly L tokens at a constant token count per row.

Each document is cut into consecutive windows of at most W = L - 2 tokens, and each window becomes a
sequence `<s> window </s>`. A full window fills a row alone. The short ones (a document's last
window, or a short document) are packed in corpus order, next fit, into the rows they share: a sequence
goes into the current shared row if it fits, else it starts a new one; the rest of a row is padding. Inside a row the
sequences are told apart by their separators (`packing.segment_ids`: each `</s>` ends one), and the
model attends only within a sequence and restarts positions at each `<s>`, so a row of several short
sequences computes exactly what as many separate padded rows would.

Why pack the short sequences: the paper kept the tokens per batch about constant by raising the batch
size when inputs near document ends were short. Here the batch keeps its number of rows and every row
holds about L real tokens, so a batch's token count is the same fixed one (up to a row's unfilled tail),
without batches of varying shape.
"""

from __future__ import annotations

import numpy as np

from roberta_jax.data.packing import PackedRows


def pack_document_windows(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    max_seq_length: int = 512,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    doc_indices: np.ndarray | None = None,
) -> PackedRows:
    """Packs documents into DOC-SENTENCES rows (format in the module docstring).

    Args: as `packing.pack_documents` (tokens int [num_tokens], doc_offsets int [num_documents + 1]).
    Returns: PackedRows with `padded_rows=True`: input_ids int32 [num_rows, L], each row's real tokens
    first, then padding.
    """
    width = max_seq_length - 2
    if width < 1:
        raise ValueError(f"max_seq_length={max_seq_length}; a row needs <s>, </s> and at least one token.")
    doc_offsets = np.asarray(doc_offsets, np.int64)
    docs = np.arange(len(doc_offsets) - 1) if doc_indices is None else np.asarray(doc_indices, np.int64)
    starts, lengths = _windows(doc_offsets[docs], doc_offsets[docs + 1], width)
    row_of, column = _next_fit(lengths + 2, max_seq_length)
    if len(row_of) == 0:
        raise ValueError("no document has a token: nothing to pack.")
    rows = np.full((row_of.max() + 1, max_seq_length), pad_id, np.int32)
    for start, length, row, col in zip(starts, lengths, row_of, column):
        rows[row, col] = bos_id
        rows[row, col + 1 : col + 1 + length] = tokens[start : start + length]
        rows[row, col + 1 + length] = eos_id
    return PackedRows(rows, max_seq_length, pad_id, padded_rows=True)


def _windows(begin: np.ndarray, end: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(start offset, length) of every window of at most `width` tokens of the documents [begin, end),
    in order; empty documents have none."""
    counts = -(-(end - begin) // width)
    first = np.repeat(begin, counts)
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first + index * width
    return starts, np.minimum(np.repeat(end, counts) - starts, width)


def _next_fit(sizes: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each item of `sizes`: an item of `capacity` gets a row of its own, the smaller
    ones are packed next fit into the rows they share; rows numbered in order of first use."""
    row_of, column = np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64)
    num_rows, shared, used = 0, -1, capacity
    for i, size in enumerate(sizes.tolist()):
        if size == capacity:
            row_of[i], num_rows = num_rows, num_rows + 1
            continue
        if used + size > capacity:
            shared, used, num_rows = num_rows, 0, num_rows + 1
        row_of[i], column[i] = shared, used
        used += size
    return row_of, column
