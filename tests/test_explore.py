"""The notebook helpers on a small random masked LM saved as an HF directory with roberta-base's tokenizer."""

import os

import jax
import numpy as np
import pytest

from roberta_jax.data.tokenizer import RobertaTokenizer
from roberta_jax.model import hf_io
from roberta_jax.model.config import preset
from roberta_jax.model.heads import RobertaForMaskedLM, init_params
from roberta_jax.tools import explore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "tests", "data", "roberta-base")


@pytest.fixture(scope="module")
def tok():
    return RobertaTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    model = RobertaForMaskedLM(preset("micro", vocab_size=50265, hidden_size=32, intermediate_size=64,
                                      max_position_embeddings=34))
    params = init_params(model, jax.random.key(0))
    # " queen" gets a scaled copy of " king": its cosine similarity to " king" is exactly 1.
    table = np.array(params["roberta"]["embeddings"]["word_embeddings"]["embedding"])
    king, queen = (tok.get_vocab()[t] for t in ("Ġking", "Ġqueen"))
    table[queen] = 3.0 * table[king]
    params["roberta"]["embeddings"]["word_embeddings"]["embedding"] = table
    out = tmp_path_factory.mktemp("hf")
    hf_io.save_hf(str(out), model, params, tokenizer=tok)
    return explore.load_checkpoint(str(out))


def test_load_checkpoint_reads_an_hf_directory_and_rejects_other_directories(ckpt, tmp_path):
    assert ckpt.kind == "hf" and ckpt.step is None
    assert ckpt.model.config.hidden_size == 32
    assert explore.max_tokens(ckpt) == 32
    with pytest.raises(FileNotFoundError, match="neither a pretraining workdir"):
        explore.load_checkpoint(str(tmp_path))


def test_fill_mask_gives_top_k_per_mask_in_descending_probability(ckpt):
    texts = ["The capital of France is <mask>.", "A <mask> and a <mask>."]
    out = explore.fill_mask(ckpt, texts, top_k=4)
    assert [len(masks) for masks in out] == [1, 2]
    for masks in out:
        for top in masks:
            probs = [p for _, p in top]
            assert len(top) == 4 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    # The same text alone (no padding) gives the same answer as in the padded batch.
    assert explore.fill_mask(ckpt, texts[:1], top_k=4)[0][0][0][0] == out[0][0][0][0]
    with pytest.raises(ValueError, match="no <mask>"):
        explore.fill_mask(ckpt, ["No mask here."])


def test_attention_weights_are_distributions_per_layer_and_head(ckpt):
    tokens, weights = explore.attention_weights(ckpt, "To be, or not to be.")
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and tokens[1] == "To"
    assert weights.shape == (2, 4, len(tokens), len(tokens))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    long_tokens, _ = explore.attention_weights(ckpt, "word " * 100)
    assert len(long_tokens) == explore.max_tokens(ckpt)


def test_nearest_tokens_rank_by_cosine_and_leave_out_the_word_and_specials(ckpt):
    top = explore.nearest_tokens(ckpt, "king", k=5)
    assert top[0][0] == " queen" and top[0][1] == pytest.approx(1.0, abs=1e-5)
    sims = [s for _, s in top]
    assert sims == sorted(sims, reverse=True)
    assert " king" not in [t for t, _ in top] and not {"<s>", "</s>", "<pad>", "<mask>"} & {t for t, _ in top}


def test_token_table_shows_bpe_tokens_and_ids(tok):
    assert explore.token_table(tok, "Hello world") == [("<s>", 0), ("Hello", 31414), ("Ġworld", 232), ("</s>", 2)]


def test_document_index_marks_documents_separators_and_padding(tok):
    texts = ["one two three four five", "six", "seven eight nine"]
    rows = explore.pack_texts(tok, texts, max_seq_length=6)  # 4 content slots per row
    # Stream: 5 + </s> + 1 + </s> + 3 = 11 tokens -> rows of 4, 4 and a padded tail of 3.
    np.testing.assert_array_equal(explore.document_index(rows, tok.eos_token_id), [
        [-1, 0, 0, 0, 0, -1],
        [-1, 0, -1, 1, -1, -1],
        [-1, 2, 2, 2, -1, -2],
    ])
    assert rows.input_ids[2, -1] == tok.pad_token_id


def test_mask_rows_draws_a_fresh_mask_each_step_and_labels_what_it_did(tok):
    rows = explore.pack_texts(tok, ["word " * 400], max_seq_length=64).input_ids[:6]  # the full rows
    first, kind = explore.mask_rows(tok, rows, step=1)
    again, _ = explore.mask_rows(tok, rows, step=1)
    other, _ = explore.mask_rows(tok, rows, step=2)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    chosen = kind != explore.NOT_CHOSEN
    # 15% of the 62 content tokens of every row, none of them special.
    np.testing.assert_array_equal(chosen.sum(-1), round(0.15 * 62))
    assert not chosen[:, [0, -1]].any()
    np.testing.assert_array_equal(first[kind == explore.MASKED], tok.mask_token_id)
    np.testing.assert_array_equal(first[~chosen], rows[~chosen])
    np.testing.assert_array_equal(first[kind == explore.UNCHANGED], rows[kind == explore.UNCHANGED])
    assert (first[kind == explore.RANDOM] != rows[kind == explore.RANDOM]).all()
    assert 0.7 < (kind == explore.MASKED).sum() / chosen.sum() < 0.9
