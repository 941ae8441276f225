"""SEGMENT-PAIR and SENTENCE-PAIR rows with next-sentence labels (Liu et al. 2019, section 4.2, table 2;
built as BERT's `create_pretraining_data.py` builds them).

Each row is one pair in RoBERTa's pair format (`build_inputs_with_special_tokens(A, B)`):

    <s> A </s></s> B </s> <pad> ... <pad>        at most L = max_seq_length real tokens

so A and B hold together at most W = L - 4 tokens. Sentences come from `sentences.document_sentences`.
The pairs are drawn once, from `seed`, document by document with a cursor at sentence i of the document:

1. While at least two of the document's sentences are left, a pair starts at i: its label is a fair coin,
   0 = B is the true continuation of A, 1 = B is random (HF `BertForPreTraining`'s `next_sentence_label`).
   A document's last lone sentence starts no pair, whatever the coin would say, so the labels stay 50/50.
2. The chunk: sentences i, i+1, ... while they fit in W (always at least two); SENTENCE-PAIR: exactly
   i and i+1. A = the chunk's first k sentences, k drawn uniformly in [1, chunk size - 1] (SENTENCE-PAIR: 1).
3. Label 0: B = the rest of the chunk; the cursor moves past the chunk. Label 1: B = sentences of another
   document (drawn uniformly among the others that have sentences), from a uniformly drawn sentence on,
   as many as fit in W - len(A) (at least one; SENTENCE-PAIR: one); the cursor moves past A only, so the
   chunk's unused sentences start the next pair (BERT puts them back the same way).
4. If A and B still exceed W (a long sentence), the longer one loses a token at a time (A from its front,
   B from its end, so a true B still starts right after A).

A SENTENCE-PAIR row holds far fewer than L real tokens; the paper raised the batch size to keep tokens per
batch about constant, here the rows keep their number and the rest is padding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from roberta_jax.data.packing import PackedRows
from roberta_jax.data.sentences import Sentences

IS_NEXT, IS_RANDOM = 0, 1


@dataclasses.dataclass(frozen=True)
class PairRows(PackedRows):
    """`PackedRows` of pairs (`padded_rows=True`) with `nsp_labels` int32 [num_rows]: 0 = B follows A, 1 = random."""

    nsp_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))


@dataclasses.dataclass(frozen=True)
class Pair:
    """One pair as token ranges of the corpus's flat tokens: A = [a_start, a_end), B = [b_start, b_end)."""

    a_start: int
    a_end: int
    b_start: int
    b_end: int
    label: int


def pack_pairs(
    tokens: np.ndarray, sentences: Sentences, *, max_seq_length: int = 512, bos_id: int, eos_id: int, pad_id: int,
    single_sentences: bool = False, seed: int = 0,
) -> PairRows:
    """SEGMENT-PAIR (or with `single_sentences`, SENTENCE-PAIR) rows of the module docstring.

    Args:
      tokens: int [num_tokens], the corpus's documents back to back (`sources.TokenizedCorpus.tokens`).
      sentences: the documents' sentences (`sentences.document_sentences`).
      max_seq_length: L; rows are int32 [num_pairs, L].
      seed: the pairs, labels and random segments are a pure function of it (and the corpus).
    """
    width = max_seq_length - 4
    if width < 2:
        raise ValueError(f"max_seq_length={max_seq_length}; a pair row needs <s> A </s></s> B </s>, at least 6.")
    pairs = draw_pairs(sentences, width, single_sentences, seed)
    if not pairs:
        raise ValueError("no document has two sentences: there is no pair to make.")
    rows = np.full((len(pairs), max_seq_length), pad_id, np.int32)
    for row, p in zip(rows, pairs):
        a, b = p.a_end - p.a_start, p.b_end - p.b_start
        row[0], row[1 + a : 3 + a], row[3 + a + b] = bos_id, eos_id, eos_id
        row[1 : 1 + a] = tokens[p.a_start : p.a_end]
        row[3 + a : 3 + a + b] = tokens[p.b_start : p.b_end]
    labels = np.array([p.label for p in pairs], np.int32)
    return PairRows(rows, max_seq_length, pad_id, padded_rows=True, nsp_labels=labels)


def draw_pairs(sentences: Sentences, width: int, single_sentences: bool, seed: int) -> list[Pair]:
    """The pairs of the module docstring, in document order, each truncated to `width` tokens together."""
    rng = np.random.default_rng(seed)
    counts = np.diff(sentences.doc_offsets)
    donors = np.flatnonzero(counts > 0)  # documents a random B can come from
    lengths = sentences.lengths
    pairs = []
    for doc in range(len(counts)):
        i, end = int(sentences.doc_offsets[doc]), int(sentences.doc_offsets[doc + 1])
        while end - i >= 2:
            label = int(rng.random() < 0.5)
            chunk_end = i + 2 if single_sentences else _fill(lengths, i, end, width, at_least=2)
            a_end = int(rng.integers(i + 1, chunk_end))
            if label == IS_NEXT:
                b, b_end = a_end, chunk_end
            else:
                room = width - int(lengths[i:a_end].sum())
                b, b_end = _random_segment(rng, sentences, donors, doc, room, single_sentences)
            bounds = sentences.starts[i], sentences.ends[a_end - 1], sentences.starts[b], sentences.ends[b_end - 1]
            pairs.append(_trimmed(Pair(*map(int, bounds), label), width))
            i = chunk_end if label == IS_NEXT else a_end
    return pairs


def _random_segment(rng: np.random.Generator, sentences: Sentences, donors: np.ndarray, doc: int, room: int,
                    single_sentences: bool) -> tuple[int, int]:
    """[first, end) sentences of a random B: a document of `donors` (ascending, holding `doc`) other than `doc`
    and a sentence of it, each drawn uniformly, then the sentences from there that fit in `room` tokens (at
    least one; with `single_sentences` one)."""
    if len(donors) < 2:
        raise ValueError("a random B comes from another document: the corpus needs two with sentences.")
    r = int(rng.integers(len(donors) - 1))
    other = donors[r + (r >= np.searchsorted(donors, doc))]  # uniform over the donors but `doc`
    first, last = int(sentences.doc_offsets[other]), int(sentences.doc_offsets[other + 1])
    b = int(rng.integers(first, last))
    return b, b + 1 if single_sentences else _fill(sentences.lengths, b, last, room, at_least=1)


def _fill(lengths: np.ndarray, start: int, end: int, width: int, at_least: int) -> int:
    """The end of the run of sentences from `start` (before `end`) that fits in `width` tokens, at least
    `at_least` sentences long (as many as there are)."""
    fitting = np.searchsorted(np.cumsum(lengths[start:end]), width, side="right")
    return start + min(max(int(fitting), at_least), end - start)


def _trimmed(pair: Pair, width: int) -> Pair:
    """`pair` with at most `width` tokens in A and B together: the longer loses a token at a time (B when
    they are equal, as BERT's `truncate_seq_pair`), A from its front and B from its end."""
    a, b = pair.a_end - pair.a_start, pair.b_end - pair.b_start
    excess = max(a + b - width, 0)
    cut_a = min(excess, max(a - b, 0))
    cut_b = min(excess - cut_a, max(b - a, 0))
    rest = excess - cut_a - cut_b  # A and B are now equally long: B, A, B, ... lose one each in turn
    cut_a, cut_b = cut_a + rest // 2, cut_b + (rest + 1) // 2
    return dataclasses.replace(pair, a_start=pair.a_start + cut_a, b_end=pair.b_end - cut_b)
