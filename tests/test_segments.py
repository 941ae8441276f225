"""Packed rows whose documents do not attend to each other: segment ids, restarted positions,
block-diagonal attention; each document's hidden states as if it stood alone in its row."""

import jax
import numpy as np

from roberta_jax.data.batches import BatchIterator
from roberta_jax.data.packing import PackedRows, pack_documents, segment_ids
from roberta_jax.model.attention import attention_mask_4d
from roberta_jax.model.config import preset
from roberta_jax.model.heads import init_params
from roberta_jax.model.layers import RobertaModel, segment_position_ids

BOS, PAD, EOS = 0, 1, 2


def test_segment_ids_of_packed_rows():
    docs = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])]
    tokens = np.concatenate(docs)
    offsets = np.array([0, 3, 5, 9])
    rows = pack_documents(tokens, offsets, max_seq_length=8, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                          drop_remainder=False).input_ids
    np.testing.assert_array_equal(rows, [[0, 5, 6, 7, 2, 8, 9, 2], [0, 2, 10, 11, 12, 13, 2, 1]])
    np.testing.assert_array_equal(segment_ids(rows, EOS), [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 2]])
    batch = next(BatchIterator(PackedRows(rows, 7, PAD), 2, shuffle=False, segment_separator=EOS))
    np.testing.assert_array_equal(batch["segment_ids"], segment_ids(rows, EOS))
    assert "segment_ids" not in next(BatchIterator(PackedRows(rows, 7, PAD), 2, shuffle=False))


def test_positions_restart_and_attention_is_block_diagonal():
    ids = np.array([[0, 5, 6, 2, 8, 9, 2, 1]])
    seg = np.array([[0, 0, 0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(segment_position_ids(ids, seg, PAD), [[2, 3, 4, 5, 2, 3, 4, 1]])
    mask = np.asarray(attention_mask_4d(ids != PAD, seg))[0, 0]
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = True
    expected[4:, 4:7] = True  # the padding query (row 7) attends too, as in HF: only keys are masked
    np.testing.assert_array_equal(mask, expected)


def test_each_document_of_a_row_is_encoded_as_if_alone():
    config = preset("micro", vocab_size=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    max_position_embeddings=20)
    model = RobertaModel(config, add_pooling_layer=False)
    params = init_params(model, jax.random.key(0))
    a, b = [0, 5, 6, 7, 8, 2], [9, 10, 11, 12, 13, 14, 2]  # `<s> a </s>` then `b </s>` (segments 0 and 1)
    packed = np.array([a + b + [PAD, PAD, PAD]], np.int32)
    mask = (packed != PAD).astype(np.int32)

    @jax.jit
    def hidden(ids, attention_mask, segments=None):
        return model.apply({"params": params}, ids, attention_mask, segment_ids=segments)[0]

    together = np.asarray(hidden(packed, mask, segment_ids(packed, EOS)))[0]
    alone = np.full((2, 16), PAD, np.int32)
    alone[0, : len(a)], alone[1, : len(b)] = a, b
    separate = np.asarray(hidden(alone, (alone != PAD).astype(np.int32)))
    np.testing.assert_allclose(together[: len(a)], separate[0, : len(a)], atol=1e-5, rtol=0)
    np.testing.assert_allclose(together[len(a) : len(a) + len(b)], separate[1, : len(b)], atol=1e-5, rtol=0)
    # Without segment ids, b sees a and sits at positions 8..14: its hidden states differ.
    crossing = np.asarray(hidden(packed, mask))[0]
    assert np.abs(crossing[len(a) : len(a) + len(b)] - separate[1, : len(b)]).max() > 1e-2
