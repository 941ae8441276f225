"""SEGMENT-PAIR and SENTENCE-PAIR rows: the exact row layout, true and random B, 50/50 labels, truncation."""

import numpy as np
import pytest

from roberta_jax.data.batches import NO_LABEL, BatchIterator, build_pretraining_data
from roberta_jax.data.pairs import IS_NEXT, IS_RANDOM, pack_pairs
from roberta_jax.data.sentences import Sentences
from tests.test_data import BOS, EOS, PAD, write

FIRST = 10  # token ids are FIRST + their position in the corpus, so a row's tokens say where they came from


def corpus(sentence_lengths):
    """(tokens, Sentences) of documents given as lists of sentence lengths."""
    lengths = [n for doc in sentence_lengths for n in doc]
    ends = np.cumsum(lengths)
    tokens = np.arange(FIRST, FIRST + ends[-1] if len(ends) else FIRST)
    doc_offsets = np.cumsum([0] + [len(doc) for doc in sentence_lengths])
    return tokens, Sentences(ends - lengths, ends, doc_offsets)


def parse(row):
    """(A, B) of a row `<s> A </s></s> B </s> <pad>...`, checking the frame: the three separators and padding."""
    real = row[row != PAD]
    assert real[0] == BOS and real[-1] == EOS and np.all(row[len(real):] == PAD)
    separators = np.flatnonzero(real == EOS)
    assert len(separators) == 3 and separators[1] == separators[0] + 1
    return real[1 : separators[0]] - FIRST, real[separators[1] + 1 : -1] - FIRST


def test_exact_rows_of_a_pair_and_its_truncation():
    # Document 0: sentences [10 11 12] [13 14]; document 1: [15 16 17 18]. Document 0 makes the only pair
    # (two sentences); its random B can only come from document 1.
    tokens, sentences = corpus([[3, 2], [4]])
    rows = {}
    for seed in range(20):
        packed = pack_pairs(tokens, sentences, max_seq_length=12, bos_id=BOS, eos_id=EOS, pad_id=PAD, seed=seed)
        assert packed.input_ids.shape == (1, 12)
        rows[int(packed.nsp_labels[0])] = packed.input_ids[0].tolist()
    assert rows == {
        IS_NEXT: [BOS, 10, 11, 12, EOS, EOS, 13, 14, EOS, PAD, PAD, PAD],
        IS_RANDOM: [BOS, 10, 11, 12, EOS, EOS, 15, 16, 17, 18, EOS, PAD],
    }
    # L = 10 leaves W = 6 for A and B: the random B (4 tokens, longer than A's 3) loses its last token.
    for seed in range(20):
        packed = pack_pairs(tokens, sentences, max_seq_length=10, bos_id=BOS, eos_id=EOS, pad_id=PAD, seed=seed)
        if packed.nsp_labels[0] == IS_RANDOM:
            assert packed.input_ids[0].tolist() == [BOS, 10, 11, 12, EOS, EOS, 15, 16, 17, EOS]
    assert packed.padded_rows and packed.row_lengths(np.arange(1)).max() <= 10


def test_truncation_trims_the_longer_a_from_its_front_b_from_its_end():
    # Sentences of 9 and 5 tokens, W = 8: 6 too many. A loses 4 (to B's 5), then B and A one each: A keeps its
    # last 4 tokens (5..8), B its first 4 (9..12).
    tokens, sentences = corpus([[9, 5], [1]])
    for seed in range(10):
        packed = pack_pairs(tokens, sentences, max_seq_length=12, bos_id=BOS, eos_id=EOS, pad_id=PAD, seed=seed)
        if packed.nsp_labels[0] == IS_NEXT:
            a, b = parse(packed.input_ids[0])
            assert a.tolist() == [5, 6, 7, 8] and b.tolist() == [9, 10, 11, 12]


def random_corpus(seed, num_docs=3000):
    rng = np.random.default_rng(seed)
    return corpus([rng.integers(1, 12, rng.integers(1, 9)).tolist() for _ in range(num_docs)])


@pytest.mark.parametrize("single_sentences", [False, True])
def test_true_continuations_follow_a_and_random_ones_come_from_another_document(single_sentences):
    tokens, sentences = random_corpus(1)
    length = 24
    packed = pack_pairs(tokens, sentences, max_seq_length=length, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                        single_sentences=single_sentences, seed=3)
    starts = set(sentences.starts.tolist())
    ends = set(sentences.ends.tolist())
    doc_of_sentence = np.repeat(np.arange(len(sentences.doc_offsets) - 1), np.diff(sentences.doc_offsets))

    def sentence(position):
        return np.searchsorted(sentences.starts, position, side="right") - 1

    def doc(position):
        return doc_of_sentence[sentence(position)]

    for row, label in zip(packed.input_ids, packed.nsp_labels):
        a, b = parse(row)
        assert len(a) and len(b) and len(a) + len(b) <= length - 4
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # contiguous runs of one document
        assert doc(a[0]) == doc(a[-1]) and doc(b[0]) == doc(b[-1])
        assert a[-1] + 1 in ends  # A ends with a whole sentence (a long one loses its front, not its end)
        if label == IS_NEXT:
            assert b[0] == a[-1] + 1  # B is the very next sentence
        else:
            assert label == IS_RANDOM and doc(b[0]) != doc(a[0]) and b[0] in starts
        if single_sentences:  # one sentence each (a long one trimmed)
            assert sentence(a[0]) == sentence(a[-1]) and sentence(b[0]) == sentence(b[-1])


@pytest.mark.parametrize("single_sentences", [False, True])
def test_labels_are_half_next_half_random_over_10k_pairs(single_sentences):
    tokens, sentences = random_corpus(2, num_docs=7000)
    labels = pack_pairs(tokens, sentences, max_seq_length=32, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                        single_sentences=single_sentences, seed=0).nsp_labels
    assert len(labels) >= 10_000
    assert abs(labels.mean() - 0.5) < 0.02, labels.mean()


def test_segments_fill_the_row_and_the_cursor_walks_each_document():
    # Equal sentences of 2 tokens, W = 8: a chunk is 4 sentences, A the first 1-3 of them. A true pair uses the
    # whole chunk; after a random one the next pair starts right after A.
    tokens, sentences = corpus([[2] * 9, [2] * 9])
    packed = pack_pairs(tokens, sentences, max_seq_length=12, bos_id=BOS, eos_id=EOS, pad_id=PAD, seed=5)
    expected_start = 0
    for row, label in zip(packed.input_ids, packed.nsp_labels):
        a, b = parse(row)
        if a[0] >= 18 > expected_start:  # document 1 starts
            expected_start = 18
        assert a[0] == expected_start
        if label == IS_NEXT:  # the whole chunk: 4 sentences, or what is left of the document
            assert len(a) + len(b) == min(8, (18 if a[0] < 18 else 36) - a[0])
            expected_start = b[-1] + 1
        else:
            expected_start = a[-1] + 1
    assert expected_start >= 16 + 18  # each document walked until fewer than two sentences were left


def test_pairs_are_a_pure_function_of_the_seed():
    tokens, sentences = random_corpus(4, num_docs=200)
    make = lambda seed: pack_pairs(tokens, sentences, max_seq_length=32, bos_id=BOS, eos_id=EOS, pad_id=PAD,  # noqa: E731
                                   seed=seed)
    np.testing.assert_array_equal(make(7).input_ids, make(7).input_ids)
    np.testing.assert_array_equal(make(7).nsp_labels, make(7).nsp_labels)
    assert not np.array_equal(make(7).nsp_labels, make(8).nsp_labels)


def test_batches_carry_the_labels_and_filler_rows_carry_none():
    tokens, sentences = corpus([[3, 2], [4]])
    packed = pack_pairs(tokens, sentences, max_seq_length=12, bos_id=BOS, eos_id=EOS, pad_id=PAD, seed=0)
    batch = next(BatchIterator(packed, 4, shuffle=False, drop_remainder=False))
    assert batch["nsp_labels"].tolist() == [packed.nsp_labels[0], NO_LABEL, NO_LABEL, NO_LABEL]
    assert batch["attention_mask"][0].sum() == (packed.input_ids[0] != PAD).sum()
    assert "segment_ids" not in batch


def test_build_pretraining_data_pairs_text_sentences(tmp_path, tok):
    text = "One two. Three four!\nFive six.\n\nSeven eight. Nine ten.\n\nEleven. Twelve.\n"
    path = write(tmp_path / "corpus.txt", text)
    order = ["One two.", "Three four!", "Five six.", "Seven eight.", "Nine ten.", "Eleven.", "Twelve."]
    doc = [0, 0, 0, 1, 1, 2, 2]
    data = build_pretraining_data(path, tok, max_seq_length=32, input_format="sentence_pair", split_seed=0)
    assert len(data.train.nsp_labels) >= 3  # document 0 makes one or two pairs, documents 1 and 2 one each
    for row, label in zip(data.train.input_ids, data.train.nsp_labels):
        real = row[row != PAD]
        separators = np.flatnonzero(real == EOS)
        a = order.index(tok.decode(real[1 : separators[0]]).strip())
        b = order.index(tok.decode(real[separators[1] + 1 : -1]).strip())
        assert (b == a + 1 and doc[a] == doc[b]) if label == IS_NEXT else doc[a] != doc[b]
    with pytest.raises(ValueError, match="data.input_format='segment_pairs'; did you mean 'segment_pair'"):
        build_pretraining_data(path, tok, input_format="segment_pairs")
