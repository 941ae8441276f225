"""SentencePiece tokenizers (data/sentencepiece.py) against transformers' XLMRobertaTokenizerFast and
CamembertTokenizerFast built from the same `sentencepiece.bpe.model`; a unigram vocabulary trained here loads in
XLMRobertaTokenizerFast; the special ids masking keeps out."""

import io
import json

import pytest

from roberta_jax.data.sentencepiece import SentencePieceTokenizer
from roberta_jax.data.tokenizer import RobertaTokenizer, load_tokenizer
from roberta_jax.tools.tokenizer import main
from roberta_jax.train.objectives import never_masked_ids
from tests.conftest import STRINGS, ko_paragraphs

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

WORDS = [["Le", "camembert", "😀"], ["한국어", "문장", "입니다"], ["Straße", "北京", "Привет", "مرحبا"]]
HF_CLASSES = {"xlm-roberta": "XLMRobertaTokenizerFast", "camembert": "CamembertTokenizerFast"}
ENCODED = ("input_ids", "offset_mapping", "special_tokens_mask", "attention_mask")


def plain(value):
    """Nested lists of ints from lists and tuples (offsets)."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def mismatches(ours, hf, texts, pairs=None, **kwargs) -> list[str]:
    """The (field, row) where our encoding of `texts` (with `pairs`) differs from HF's."""
    a = ours(texts, pairs, return_offsets_mapping=True, return_special_tokens_mask=True, **kwargs)
    b = hf(texts, pairs, return_offsets_mapping=True, return_special_tokens_mask=True, **kwargs)
    bad = [f"{key}[{row}]" for key in ENCODED for row in range(len(texts)) if plain(a[key][row]) != plain(b[key][row])]
    bad += [f"word_ids[{row}]" for row in range(len(texts)) if a.word_ids(row) != b.word_ids(row)]
    return bad


def assert_encodes_as(ours, hf, texts):
    """0 mismatches on singles, pairs, pre-split words, padded and truncated batches, and decoding."""
    assert mismatches(ours, hf, texts) == []
    assert mismatches(ours, hf, texts, texts[::-1]) == []
    assert mismatches(ours, hf, WORDS, is_split_into_words=True) == []
    assert mismatches(ours, hf, texts, texts[::-1], padding=True, truncation=True, max_length=24) == []
    ids = ours(texts, texts[::-1])["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == hf.batch_decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("model_type", list(HF_CLASSES))
def test_encodes_as_the_hf_fast_tokenizer_of_the_same_model(spm_dir, texts, model_type):
    hf = getattr(transformers, HF_CLASSES[model_type]).from_pretrained(spm_dir)
    ours = SentencePieceTokenizer.from_pretrained(spm_dir, model_type=model_type)
    assert ours.vocab_size == len(hf) and ours.get_vocab() == hf.get_vocab()
    assert_encodes_as(ours, hf, texts)
    # The layouts: XLM-R's <pad> is 1 and <mask> the last id; CamemBERT's <s>, </s> are 5, 6 after its NOTUSED.
    layout = (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id, ours.mask_token_id)
    assert layout == ((0, 1, 2, 3, len(hf) - 1) if model_type == "xlm-roberta" else (5, 1, 6, 3, len(hf) - 1))
    pair = ours("안녕 세계", "Bonjour")
    b, e = ours.bos_token_id, ours.eos_token_id
    assert pair["input_ids"][0] == b and pair["input_ids"].count(e) == 3 and pair["input_ids"][-1] == e
    assert pair.sequence_ids(0).count(None) == 4


@pytest.mark.parametrize("model_type", list(HF_CLASSES))
def test_tokenizer_json_both_ways(spm_dir, texts, tmp_path, model_type):
    hf = getattr(transformers, HF_CLASSES[model_type]).from_pretrained(spm_dir)
    hf.save_pretrained(tmp_path / "hf")
    from_hf = load_tokenizer(tmp_path / "hf")  # tokenizer.json written by transformers
    assert (type(from_hf), from_hf.model_type) == (SentencePieceTokenizer, model_type)
    assert_encodes_as(from_hf, hf, texts)

    from_hf.save(tmp_path / "ours")  # and ours, read by transformers' auto class
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert type(auto).__name__ == HF_CLASSES[model_type].removesuffix("Fast")
    assert_encodes_as(from_hf, auto, texts)


def test_a_trained_unigram_tokenizer_loads_in_xlmr(tmp_path, texts, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts), encoding="utf-8")
    main(["train", "--kind", "unigram", "--files", str(corpus), "--vocab-size", "600", "--out", str(tmp_path / "tok")])
    printed = capsys.readouterr().out.strip()
    ours = load_tokenizer(tmp_path / "tok")
    # 600 ids from the Korean document and the strings; the strings alone (no shared data) give fewer.
    assert printed.endswith(f": {ours.vocab_size} tokens, <pad> = 1, <mask> = {ours.vocab_size - 1}")
    assert (type(ours), ours.kind) == (SentencePieceTokenizer, "unigram")
    assert ours.vocab_size == 600 if ko_paragraphs() else 150 < ours.vocab_size < 600
    assert [ours.backend.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    hf = transformers.XLMRobertaTokenizerFast.from_pretrained(tmp_path / "tok")
    assert_encodes_as(ours, hf, texts)
    # Trained on these texts, no character of them is unknown.
    assert ours.unk_token_id not in {i for row in ours(texts)["input_ids"] for i in row}


def test_a_unigram_vocab_too_small_for_the_characters_is_named(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=40 cannot hold every character of the corpus"):
        SentencePieceTokenizer.train(iter(STRINGS), vocab_size=40)
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        SentencePieceTokenizer.train([tmp_path / "missing.txt"])


def test_never_masked_ids_hold_every_layout_special(spm_dir):
    camembert = SentencePieceTokenizer.from_pretrained(spm_dir, model_type="camembert")
    # <s>NOTUSED 0, <pad> 1, </s>NOTUSED 2, <unk> 3, <unk>NOTUSED 4, <s> 5, </s> 6; <mask> is the one masked in.
    assert never_masked_ids(camembert, camembert.vocab_size) == (0, 1, 2, 3, 4, 5, 6)
    xlmr = SentencePieceTokenizer.from_pretrained(spm_dir)
    assert never_masked_ids(xlmr, xlmr.vocab_size + 2) == (0, 1, 2, 3, xlmr.vocab_size, xlmr.vocab_size + 1)


def test_bad_model_files_are_named(tmp_path):
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="sentencepiece.bpe.model: not a SentencePiece model"):
        SentencePieceTokenizer.from_pretrained(tmp_path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(STRINGS * 5), model_writer=model, vocab_size=300,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match="a SentencePiece BPE model; XLM-R and CamemBERT use UNIGRAM"):
        SentencePieceTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor sentencepiece.bpe.model"):
        SentencePieceTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="'camembrt'.*did you mean 'camembert'"):
        SentencePieceTokenizer.from_vocab([("<s>", 0.0)], model_type="camembrt")


def test_byte_level_directories_still_load_as_roberta(tmp_path):
    RobertaTokenizer.train(iter(STRINGS * 3), vocab_size=300, min_frequency=1).save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert (type(tok), tok.kind, tok.model_type) == (RobertaTokenizer, "byte_level_bpe", "roberta")
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "RobertaTokenizer"
