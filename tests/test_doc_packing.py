"""DOC-SENTENCES rows: no input crosses a document, full windows alone, short ones sharing rows."""

import numpy as np
import pytest

from roberta_jax.data.batches import BatchIterator, build_pretraining_data
from roberta_jax.data.doc_packing import pack_document_windows
from roberta_jax.data.packing import segment_ids
from tests.test_data import BOS, EOS, PAD, word_tokenizer, write


def test_exact_rows_segments_and_lengths():
    # Documents of 3, 0, 9, 2 and 1 tokens; L = 8: windows of at most 6.
    tokens = np.arange(10, 25)
    offsets = np.array([0, 3, 3, 12, 14, 15])
    rows = pack_document_windows(tokens, offsets, max_seq_length=8, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    expected = [
        [BOS, 10, 11, 12, EOS, PAD, PAD, PAD],  # document 0, then document 2's tail would not fit
        [BOS, 13, 14, 15, 16, 17, 18, EOS],  # document 2's full window: a row of its own
        [BOS, 19, 20, 21, EOS, PAD, PAD, PAD],  # document 2's tail; document 3 (4 slots) would not fit
        [BOS, 22, 23, EOS, BOS, 24, EOS, PAD],  # documents 3 and 4 share a row
    ]
    np.testing.assert_array_equal(rows.input_ids, expected)
    assert rows.has_padding
    np.testing.assert_array_equal(rows.row_lengths(np.arange(4)), [5, 8, 5, 7])
    np.testing.assert_array_equal(segment_ids(rows.input_ids, EOS)[3], [0, 0, 0, 0, 1, 1, 1, 2])
    batch = next(BatchIterator(rows, 4, shuffle=False, segment_separator=EOS))
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [5, 8, 5, 7])


def test_no_input_crosses_a_document_and_nothing_is_lost():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.arange(offsets[-1]) + 10  # token t belongs to the document whose range holds t - 10
    rows = pack_document_windows(tokens, offsets, max_seq_length=16, bos_id=BOS, eos_id=EOS, pad_id=PAD).input_ids
    seg = segment_ids(rows, EOS)
    seen = []
    for row, row_seg in zip(rows, seg):
        for s in np.unique(row_seg[row != PAD]):
            content = row[(row_seg == s) & (row > EOS)]
            docs = np.searchsorted(offsets, content - 10, side="right") - 1
            assert len(set(docs)) == 1  # one document per input
            assert np.all(np.diff(content) == 1)  # contiguous within it
            seen.append(content)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), tokens)
    # Only the rows shared by short inputs have room left: most rows are nearly full.
    assert (rows != PAD).mean() > 0.8


def test_build_pretraining_data_reads_the_format_and_names_a_bad_one(tmp_path):
    corpus = write(tmp_path / "corpus.txt", "the quick brown fox\njumps over\n\na lazy dog\n")
    data = build_pretraining_data(corpus, word_tokenizer(), max_seq_length=6, input_format="doc_sentences")
    # Documents [10 11 12 13 14 15] and [16 17 18]: windows of 4.
    np.testing.assert_array_equal(data.train.input_ids, [[BOS, 10, 11, 12, 13, EOS], [BOS, 14, 15, EOS, PAD, PAD],
                                                         [BOS, 16, 17, 18, EOS, PAD]])
    with pytest.raises(ValueError, match="data.input_format='doc_sentence'; did you mean 'doc_sentences'"):
        build_pretraining_data(corpus, word_tokenizer(), input_format="doc_sentence")
