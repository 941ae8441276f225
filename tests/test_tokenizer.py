"""Byte-level BPE tokenizer: parity with HF `RobertaTokenizerFast` and with a pure-Python GPT-2 BPE.

transformers 5 ships no slow (pure-Python) RoBERTa or GPT-2 tokenizer: its `RobertaTokenizer` and
`GPT2Tokenizer` are the Rust-backed fast ones. The independent reference is therefore `_reference_bpe`
below, OpenAI's GPT-2 `encoder.py` algorithm, run over the same vocab.json and merges.txt.
"""

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from roberta_jax.data.tokenizer import RobertaTokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
regex = pytest.importorskip("regex")

DATA = Path(__file__).parent / "data" / "roberta-base"

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "It's 3.14159, isn't it?! ($100) -- e-mail: a.b@c.org #tag",
    "Café naïve résumé, Ångström, Œuvre, São Paulo, Zürich; ﬁ ligature",
    "日本語のテキスト。中文句子，한국어 문장",
    "emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷 😀😀",
    "runs    of     spaces   and trailing   ",
    "line one\n\nline two\tcol\t\tx\r\nend\n",
    "The capital of France is <mask>.",
    "<mask> starts, two<mask>masks <mask>  <mask>\n<mask>",
    "",
    "   ",
    " leading space",
]
PLAIN_TEXTS = [t for t in TEXTS if "<mask>" not in t]
QUESTIONS = ["Where do the foxes live?", "Who wrote it?"]
CONTEXTS = [
    "Foxes live on every continent except Antarctica. " * 6 + "They are small to medium-sized canids.",
    "The book was written by a committee of twelve people over three years, in Zürich and São Paulo.",
]
WORDS = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["naïve", "日本", "👍", "New-York", "3.5"]]


def _hf_from_files(add_prefix_space: bool = False):
    """HF's tokenizer from the same files. The Hub's roberta-base marks <mask> lstrip (transformers 4 did so
    itself); transformers 5 built from vocab/merges alone does not, so the mask is passed the Hub's way."""
    vocab = json.loads((DATA / "vocab.json").read_text(encoding="utf-8"))
    lines = (DATA / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    mask = tokenizers.AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    hf = transformers.RobertaTokenizerFast(
        vocab=vocab, merges=merges, mask_token=mask, add_prefix_space=add_prefix_space
    )
    assert len(hf) > 50000  # the vocabulary really loaded (a vocab_file= keyword is silently ignored)
    return hf


@pytest.fixture(scope="module")
def hf():
    return _hf_from_files()


@pytest.fixture(scope="module")
def ours():
    return RobertaTokenizer.from_files(DATA / "vocab.json", DATA / "merges.txt")


def _plain(value):
    """Nested lists of ints from arrays, lists and tuples (offsets), ragged or not."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _assert_same(ours_out, hf_out, keys=("input_ids", "attention_mask")):
    for key in keys:
        assert _plain(ours_out[key]) == _plain(hf_out[key]), key


def test_special_ids_and_size_match_hf(ours, hf):
    assert (ours.bos_token_id, ours.cls_token_id) == (hf.bos_token_id, hf.cls_token_id)
    assert (ours.eos_token_id, ours.sep_token_id) == (hf.eos_token_id, hf.sep_token_id)
    assert (ours.pad_token_id, ours.unk_token_id, ours.mask_token_id) == (
        hf.pad_token_id,
        hf.unk_token_id,
        hf.mask_token_id,
    )
    assert sorted(ours.all_special_ids) == sorted(hf.all_special_ids)
    assert ours.vocab_size == len(ours) == len(hf)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_hf(ours, hf, text):
    kwargs = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    got, want = ours(text, **kwargs), hf(text, **kwargs)
    _assert_same(got, want, ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask"))
    assert got.word_ids() == want.word_ids()
    for skip in (False, True):
        assert ours.decode(got["input_ids"], skip_special_tokens=skip) == hf.decode(
            want["input_ids"], skip_special_tokens=skip
        )


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _reference_bpe(text: str, vocab: dict[str, int], ranks: dict[tuple[str, str], int]) -> list[int]:
    """OpenAI GPT-2 encoder.py: split by the GPT-2 regex, map bytes to unicode, merge lowest-ranked pairs."""
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    ids = []
    for piece in pattern.findall(text):
        word = [_bytes_to_unicode()[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pair = min(itertools.pairwise(word), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if tuple(word[i : i + 2]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += [vocab[token] for token in word]
    return ids


def test_matches_pure_python_gpt2_bpe(ours):
    vocab = json.loads((DATA / "vocab.json").read_text(encoding="utf-8"))
    lines = (DATA / "merges.txt").read_text(encoding="utf-8").splitlines()
    ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(lines[1:]) if line}
    got = ours.encode_batch(PLAIN_TEXTS, add_special_tokens=False)["input_ids"]
    assert got == [_reference_bpe(text, vocab, ranks) for text in PLAIN_TEXTS]


@pytest.mark.parametrize(("padding", "max_length"), [(True, None), ("max_length", 64)])
def test_batch_matches_hf(ours, hf, padding, max_length):
    kwargs = dict(padding=padding, max_length=max_length, return_offsets_mapping=True, return_special_tokens_mask=True)
    got, want = ours(TEXTS, return_tensors="np", **kwargs), hf(TEXTS, return_tensors="np", **kwargs)
    assert got["input_ids"].shape == want["input_ids"].shape
    _assert_same(got, want, ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask"))
    want_text = hf.batch_decode(want["input_ids"], skip_special_tokens=True)
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True) == want_text
    assert ours.batch_decode(got["input_ids"]) == hf.batch_decode(want["input_ids"])


def test_unpadded_batch_is_ragged_lists(ours, hf):
    _assert_same(ours(TEXTS), hf(TEXTS))
    with pytest.raises(ValueError, match="padding"):
        ours(TEXTS, return_tensors="np")


@pytest.mark.parametrize("strategy", ["longest_first", "only_second", "only_first"])
def test_pair_truncation_matches_hf(ours, hf, strategy):
    short = ["A short question?", "Café <mask> 日本語", "tiny"]
    long = [CONTEXTS[0], "Café <mask> 日本語 " * 6, "emoji 👍🏽 and\ttabs\n" * 4]
    # Each strategy truncates only where it may: only_first needs the second text to fit, and vice versa.
    firsts, seconds = {"longest_first": (long, long[::-1]), "only_second": (short, long), "only_first": (long, short)}[
        strategy
    ]
    kwargs = dict(truncation=strategy, max_length=24, return_offsets_mapping=True, return_special_tokens_mask=True)
    got, want = ours(firsts, seconds, **kwargs), hf(firsts, seconds, **kwargs)
    _assert_same(got, want, ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask"))
    assert [got.sequence_ids(i) for i in range(3)] == [want.sequence_ids(i) for i in range(3)]


def test_qa_stride_windows_match_hf(ours, hf):
    kwargs = dict(
        truncation="only_second",
        max_length=40,
        stride=12,
        padding="max_length",
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    got, want = (
        ours(QUESTIONS, CONTEXTS, return_tensors="np", **kwargs),
        hf(QUESTIONS, CONTEXTS, return_tensors="np", **kwargs),
    )
    assert len(want["input_ids"]) > len(QUESTIONS) + 2  # the long context really spans several windows
    _assert_same(got, want, ("input_ids", "attention_mask", "offset_mapping", "overflow_to_sample_mapping"))
    rows = range(len(want["input_ids"]))
    assert [got.sequence_ids(i) for i in rows] == [want.sequence_ids(i) for i in rows]


def test_single_text_overflow_matches_hf(ours, hf):
    kwargs = dict(truncation=True, max_length=10, stride=3, return_overflowing_tokens=True)
    _assert_same(ours(CONTEXTS[1], **kwargs), hf(CONTEXTS[1], **kwargs), ("input_ids", "overflow_to_sample_mapping"))


def test_split_into_words_matches_hf(ours):
    hf_prefix = _hf_from_files(add_prefix_space=True)
    want = hf_prefix(WORDS, is_split_into_words=True, return_offsets_mapping=True)
    prefixed = RobertaTokenizer.from_files(DATA / "vocab.json", DATA / "merges.txt", add_prefix_space=True)
    for got in (
        prefixed(WORDS, is_split_into_words=True, return_offsets_mapping=True),
        ours(WORDS, is_split_into_words=True, add_prefix_space=True, return_offsets_mapping=True),
    ):
        _assert_same(got, want, ("input_ids", "offset_mapping"))
        assert [got.word_ids(i) for i in range(len(WORDS))] == [want.word_ids(i) for i in range(len(WORDS))]
    # A single pre-split sentence, and plain text under add_prefix_space.
    _assert_same(prefixed(WORDS[2], is_split_into_words=True), hf_prefix(WORDS[2], is_split_into_words=True))
    _assert_same(prefixed(TEXTS), hf_prefix(TEXTS))


def test_split_into_words_without_prefix_space_matches_hf(ours, hf):
    got, want = ours(WORDS, is_split_into_words=True), hf(WORDS, is_split_into_words=True)
    _assert_same(got, want)
    assert got.word_ids(2) == want.word_ids(2)


def test_special_token_helpers_match_hf(ours, hf):
    a = hf(TEXTS[0], add_special_tokens=False)["input_ids"]
    b = hf(TEXTS[7], add_special_tokens=False)["input_ids"]
    single = hf(TEXTS[0], return_special_tokens_mask=True)
    pair = hf(TEXTS[0], TEXTS[7], return_special_tokens_mask=True, return_token_type_ids=True)
    assert ours.build_inputs_with_special_tokens(a) == single["input_ids"]
    assert ours.build_inputs_with_special_tokens(a, b) == pair["input_ids"]
    assert ours.get_special_tokens_mask(a) == single["special_tokens_mask"]
    assert ours.get_special_tokens_mask(a, b) == pair["special_tokens_mask"]
    with_mask = pair["input_ids"] + [hf.pad_token_id, hf.unk_token_id]
    assert ours.get_special_tokens_mask(with_mask, already_has_special_tokens=True) == hf.get_special_tokens_mask(
        with_mask, already_has_special_tokens=True
    )
    assert ours.create_token_type_ids_from_sequences(a, b) == pair["token_type_ids"]


def test_save_vocabulary_reproduces_the_files(ours, tmp_path):
    vocab_path, merges_path = ours.save_vocabulary(tmp_path, filename_prefix="rb")
    assert Path(vocab_path).name == "rb-vocab.json" and Path(merges_path).name == "rb-merges.txt"
    assert json.loads(Path(vocab_path).read_text(encoding="utf-8")) == json.loads(
        (DATA / "vocab.json").read_text("utf-8")
    )
    merges = (DATA / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert Path(merges_path).read_text(encoding="utf-8").splitlines()[1:] == [m for m in merges if m]


def test_save_loads_in_hf_and_back(ours, hf, tmp_path):
    ours(TEXTS, truncation=True, max_length=5, padding="max_length")  # settings that must not be saved
    ours.save(tmp_path)
    raw = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [e.ids for e in raw.encode_batch(TEXTS)] == hf(TEXTS)["input_ids"]
    loaded = [
        transformers.RobertaTokenizerFast.from_pretrained(tmp_path),
        transformers.AutoTokenizer.from_pretrained(tmp_path),
    ]
    kwargs = dict(padding=True, return_offsets_mapping=True)
    got = ours(TEXTS, **kwargs)
    for hf_loaded in loaded:
        assert len(hf_loaded) == len(ours) and hf_loaded.mask_token_id == ours.mask_token_id
        _assert_same(got, hf_loaded(TEXTS, **kwargs), ("input_ids", "attention_mask", "offset_mapping"))
    _assert_same(got, RobertaTokenizer.from_pretrained(tmp_path)(TEXTS, **kwargs))


def test_from_pretrained_reads_vocab_files_without_tokenizer_json(ours, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    _assert_same(RobertaTokenizer.from_pretrained(tmp_path)(TEXTS), ours(TEXTS))
