"""Tests for the pretraining input pipeline: reading, tokenizing, caching, packing, batching."""

import itertools
import json
import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from roberta_jax.data.batches import build_pretraining_data
from roberta_jax.data.encoders import TokenizerInfo, resolve_tokenizer
from roberta_jax.data.packing import pack_documents, unpack_documents
from roberta_jax.data.sources import document_texts, split_documents, tokenize_corpus
from roberta_jax.data.tokenizer import RobertaTokenizer

BOS, PAD, EOS = 0, 1, 2
WIKITEXT = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/corpus/wikitext2-test.raw"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "bad",
    "jam",
]


class WordIds:
    """A fake tokenizer: word i of `WORDS` has id 10 + i."""

    def __call__(self, texts):
        return [[10 + WORDS.index(w) for w in t.split()] for t in texts]


def word_tokenizer():
    return resolve_tokenizer(WordIds(), bos_id=BOS, eos_id=EOS, pad_id=PAD, fingerprint="words")


def ids(text):
    return WordIds()([text])[0]


def documents(corpus):
    """The corpus's documents as id lists, cut from its flat tokens at its offsets."""
    return [corpus.tokens[a:b].tolist() for a, b in zip(corpus.doc_offsets[:-1], corpus.doc_offsets[1:])]


@pytest.fixture(scope="module")
def bpe():
    """A tiny byte-level BPE with RoBERTa's special ids (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = " ".join(WORDS * 50) + " Robert Boulter is an English film , television and theatre actor ."
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- packing


def test_exact_rows_from_a_text_file(tmp_path):
    corpus = write(
        tmp_path / "corpus.txt",
        "the quick brown fox\njumps over\n\n  \na lazy dog\n\n\n\nwhile seven wizards quietly hex bad jam the dog\n",
    )
    # Documents: [10 11 12 13 14 15] [16 17 18] [19 20 21 22 23 24 25 10 18]; L=6 → 4 content slots.
    data = build_pretraining_data(corpus, word_tokenizer(), max_seq_length=6, drop_remainder=False)
    expected = [
        [BOS, 10, 11, 12, 13, EOS],
        [BOS, 14, 15, EOS, 16, EOS],
        [BOS, 17, 18, EOS, 19, EOS],
        [BOS, 20, 21, 22, 23, EOS],
        [BOS, 24, 25, 10, 18, EOS],
    ]
    np.testing.assert_array_equal(data.train.input_ids, expected)
    assert data.train.input_ids.dtype == np.int32 and not data.train.has_padding
    assert data.stats["train/documents"] == 3 and data.stats["train/tokens"] == 18

    data = build_pretraining_data(corpus, word_tokenizer(), max_seq_length=7, drop_remainder=False)
    np.testing.assert_array_equal(
        data.train.input_ids,
        [
            [BOS, 10, 11, 12, 13, 14, EOS],
            [BOS, 15, EOS, 16, 17, 18, EOS],
            [BOS, EOS, 19, 20, 21, 22, EOS],
            [BOS, 23, 24, 25, 10, 18, EOS],
        ],
    )
    data = build_pretraining_data(corpus, word_tokenizer(), max_seq_length=8, drop_remainder=False)
    np.testing.assert_array_equal(
        data.train.input_ids,
        [
            [BOS, 10, 11, 12, 13, 14, 15, EOS],
            [BOS, EOS, 16, 17, 18, EOS, 19, EOS],
            [BOS, 20, 21, 22, 23, 24, 25, EOS],
            [BOS, 10, 18, EOS, PAD, PAD, PAD, PAD],
        ],
    )
    assert data.train.last_row_length == 4
    dropped = build_pretraining_data(corpus, word_tokenizer(), max_seq_length=8, drop_remainder=True)
    np.testing.assert_array_equal(dropped.train.input_ids, data.train.input_ids[:3])


def naive_pack(docs, length, drop_remainder):
    stream = []
    for i, doc in enumerate(docs):
        stream += ([EOS] if i else []) + list(doc)
    width = length - 2
    rows = [[BOS] + stream[i : i + width] + [EOS] for i in range(0, len(stream), width)]
    if len(rows[-1]) < length:
        rows = rows[:-1] if drop_remainder else rows[:-1] + [rows[-1] + [PAD] * (length - len(rows[-1]))]
    return np.array(rows, np.int32)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_packing_matches_reference_for_any_chunking_and_selection(tmp_path, drop_remainder):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 60)
    tokens = rng.integers(5, 1000, lengths.sum()).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    docs = [tokens[a:b] for a, b in itertools.pairwise(offsets)]
    subset = np.sort(rng.choice(60, 25, replace=False))
    packing = dict(max_seq_length=16, bos_id=BOS, eos_id=EOS, pad_id=PAD, drop_remainder=drop_remainder)
    for selection in (None, subset):
        chosen = docs if selection is None else [docs[i] for i in selection]
        expected = naive_pack(chosen, 16, drop_remainder)
        for chunk_tokens in (1, 13, 1 << 20):
            packed = pack_documents(tokens, offsets, **packing, doc_indices=selection, chunk_tokens=chunk_tokens)
            np.testing.assert_array_equal(packed.input_ids, expected)
    on_disk = pack_documents(tokens, offsets, **packing, out_path=str(tmp_path / "rows.npy"), chunk_tokens=50)
    assert isinstance(on_disk.input_ids, np.memmap)
    np.testing.assert_array_equal(on_disk.input_ids, naive_pack(docs, 16, drop_remainder))


def test_too_little_data_for_one_row_is_an_error():
    with pytest.raises(ValueError, match="fewer than one row"):
        pack_documents(np.arange(5, 10), [0, 5], max_seq_length=8, bos_id=BOS, eos_id=EOS, pad_id=PAD)


def real_text(tmp_path):
    if WIKITEXT.exists():
        return str(WIKITEXT)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, rng.integers(0, 200))) + " ." for _ in range(2000)]
    return write(tmp_path / "generated.txt", "\n".join(lines) + "\n")


def test_nothing_lost_or_duplicated_on_a_real_corpus(tmp_path, bpe):
    path = real_text(tmp_path)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    expected = [e.ids for e in bpe.encode_batch(lines, add_special_tokens=False)]
    corpus = tokenize_corpus(path, bpe, doc_split="line")
    assert corpus.num_documents == len(lines)

    padded = pack_documents(corpus.tokens, corpus.doc_offsets, bos_id=BOS, eos_id=EOS, pad_id=PAD, drop_remainder=False)
    assert padded.input_ids.shape[1] == 512
    assert (padded.input_ids[:, 0] == BOS).all()
    assert (padded.input_ids[:-1, -1] == EOS).all()
    assert [d.tolist() for d in unpack_documents(padded, EOS)] == expected

    dropped = pack_documents(corpus.tokens, corpus.doc_offsets, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    assert not dropped.has_padding and dropped.num_rows == padded.num_rows - 1
    got = np.concatenate([np.append(d, EOS) for d in unpack_documents(dropped, EOS)])[:-1]
    want = np.concatenate([np.append(d, EOS) for d in expected])[:-1]
    np.testing.assert_array_equal(got, want[: dropped.num_rows * 510])


# ----------------------------------------------------------------------------- sources


def test_document_splitting_modes(tmp_path):
    path = write(tmp_path / "a.txt", "\n  \nthe dog\r\nover a fox\n\t\n\n  the jam\n\nbad\n   \n")
    corpus = tokenize_corpus(path, word_tokenizer())
    assert documents(corpus) == [ids("the dog over a fox"), ids("the jam"), ids("bad")]
    assert (corpus.num_documents, corpus.num_empty_documents) == (3, 0)

    corpus = tokenize_corpus(path, word_tokenizer(), doc_split="line")
    assert documents(corpus) == [ids(t) for t in ("the dog", "over a fox", "the jam", "bad")]
    assert (corpus.num_documents, corpus.num_empty_documents) == (4, 6)  # blank lines: empty documents

    other = write(tmp_path / "b.txt", "a lazy dog\n\nthe fox")
    corpus = tokenize_corpus([path, other], word_tokenizer(), doc_split="file")
    assert documents(corpus) == [ids("the dog over a fox the jam bad"), ids("a lazy dog the fox")]


def test_jsonl_and_parquet_with_a_text_field(tmp_path):
    records = ["the dog", "", "   ", "a lazy fox", None]
    with open(tmp_path / "a.jsonl", "w") as f:
        f.writelines(json.dumps({"body": r, "id": i}) + "\n" for i, r in enumerate(records))
    pq.write_table(pa.table({"body": records, "id": list(range(5))}), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.parquet"):
        corpus = tokenize_corpus(
            str(tmp_path / name), word_tokenizer(), text_field="body", cache_dir=str(tmp_path / "c")
        )
        assert documents(corpus) == [ids("the dog"), ids("a lazy fox")]
        assert corpus.num_empty_documents == 3
    with pytest.raises(ValueError, match="no field 'text'.*'body'"):
        tokenize_corpus(str(tmp_path / "a.jsonl"), word_tokenizer())


def test_second_run_reads_the_cache(tmp_path, bpe):
    path = write(tmp_path / "a.txt", "the quick fox\n\njumps over a lazy dog\n")
    cache = str(tmp_path / "cache")
    first = tokenize_corpus(path, bpe, cache_dir=cache)
    assert not first.from_cache

    def no_tokenizing(texts):
        raise AssertionError("tokenized again despite the cache")

    same = TokenizerInfo(no_tokenizing, BOS, EOS, PAD, resolve_tokenizer(bpe).fingerprint)
    second = tokenize_corpus(path, same, cache_dir=cache)
    assert second.from_cache and isinstance(second.tokens, np.memmap)
    np.testing.assert_array_equal(second.tokens, first.tokens)
    np.testing.assert_array_equal(second.doc_offsets, first.doc_offsets)

    rows = build_pretraining_data(path, same, max_seq_length=4, cache_dir=cache).train
    again = build_pretraining_data(path, same, max_seq_length=4, cache_dir=cache)
    assert again.stats["train/from_cache"] and isinstance(again.train.input_ids, np.memmap)
    np.testing.assert_array_equal(again.train.input_ids, rows.input_ids)

    write(tmp_path / "a.txt", "the quick fox\n\njumps over a lazy cat\n")  # changed file: tokenized again
    assert not tokenize_corpus(path, bpe, cache_dir=cache).from_cache


def test_two_processes_tokenize_like_one(tmp_path, bpe):
    path = write(tmp_path / "a.txt", "\n\n".join(" ".join(WORDS[i % 7 :]) for i in range(300)))
    one = tokenize_corpus(path, bpe, batch_size=16)
    two = tokenize_corpus(path, bpe, batch_size=16, num_proc=2, cache_dir=str(tmp_path / "c"))
    assert one.num_documents == 300
    np.testing.assert_array_equal(one.tokens, two.tokens)
    np.testing.assert_array_equal(one.doc_offsets, two.doc_offsets)


def test_project_tokenizer_is_used_without_its_padding_state(tmp_path, bpe):
    tokenizer_module = pytest.importorskip("roberta_jax.data.tokenizer")
    tokenizer = tokenizer_module.RobertaTokenizer(Tokenizer.from_str(bpe.to_str()))
    tokenizer.encode_batch(["the fox", "a lazy dog jumps"], padding="max_length", max_length=32, truncation=True)
    path = write(tmp_path / "a.txt", "the quick brown fox jumps over a lazy dog\n\nthe dog")
    corpus = tokenize_corpus(path, tokenizer)
    plain = tokenize_corpus(path, bpe)
    np.testing.assert_array_equal(corpus.tokens, plain.tokens)
    np.testing.assert_array_equal(corpus.doc_offsets, plain.doc_offsets)
    info = resolve_tokenizer(tokenizer)
    assert (info.bos_id, info.pad_id, info.eos_id) == (BOS, PAD, EOS)


def test_bad_files_are_errors_naming_the_path(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = write(tmp_path / "blank.jsonl", " \n\n")
    for path, message in ((str(latin1), "not valid UTF-8"), (str(empty), "empty"), (blank, "only whitespace")):
        with pytest.raises(ValueError, match=message) as error:
            tokenize_corpus(path, word_tokenizer())
        assert path in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tokenize_corpus(str(tmp_path / "missing.txt"), word_tokenizer())


def test_eval_split_by_document(tmp_path):
    docs = [" ".join(WORDS[i % 5 : i % 5 + 3]) for i in range(40)]
    path = write(tmp_path / "a.txt", "\n\n".join(docs))
    train, held_out = split_documents(40, 0.1, seed=3)
    assert len(held_out) == 4 and not set(train) & set(held_out) and len(train) + len(held_out) == 40
    np.testing.assert_array_equal(split_documents(40, 0.1, seed=3)[1], held_out)
    assert not np.array_equal(split_documents(40, 0.1, seed=4)[1], held_out)

    data = build_pretraining_data(path, word_tokenizer(), eval_fraction=0.1, split_seed=3, max_seq_length=6)
    want = [ids(docs[i]) for i in held_out]
    assert [d.tolist() for d in unpack_documents(data.eval, EOS)] == want
    assert data.stats["train/documents"] == 36 and data.stats["eval/documents"] == 4

    other = write(tmp_path / "eval.txt", "a lazy dog\n\nthe fox")
    data = build_pretraining_data(path, word_tokenizer(), eval_sources=other, max_seq_length=6)
    np.testing.assert_array_equal(data.eval.input_ids, [[BOS, 16, 17, 18, EOS, EOS], [BOS, 10, 13, EOS, PAD, PAD]])


# ----------------------------------------------------------------------------- batches


def test_demo_corpus_is_valid(tmp_path):
    path = pathlib.Path(__file__).resolve().parents[1] / "data/demo_corpus.txt"
    corpus = tokenize_corpus(
        str(path), resolve_tokenizer(lambda texts: [[5] * len(t.split()) for t in texts], bos_id=0, eos_id=2, pad_id=1)
    )
    assert 300_000 < os.path.getsize(path) < 600_000 and corpus.num_documents > 1000


def test_a_separator_line_splits_text_files(tmp_path):
    path = write(tmp_path / "stories.txt", "the dog\n<|endoftext|>\nthe fox\n\njumps\n  <|endoftext|> \n"
                                           "<|endoftext|>\nthe jam")
    assert list(document_texts(path, doc_separator="<|endoftext|>")) == ["the dog", "the fox\n\njumps", "the jam"]
    corpus = tokenize_corpus(path, word_tokenizer(), doc_separator="<|endoftext|>", cache_dir=str(tmp_path / "c"))
    assert documents(corpus) == [ids("the dog"), ids("the fox jumps"), ids("the jam")]
    # The separator is part of the cache key: the same file split by blank lines is another corpus.
    lenient = resolve_tokenizer(lambda texts: [[len(w) for w in t.split()] for t in texts], bos_id=BOS, eos_id=EOS,
                                pad_id=PAD, fingerprint="word lengths")
    cache = str(tmp_path / "lengths")
    assert tokenize_corpus(path, lenient, doc_separator="<|endoftext|>", cache_dir=cache).num_documents == 3
    blank_lines = tokenize_corpus(path, lenient, cache_dir=cache)
    assert not blank_lines.from_cache and blank_lines.num_documents == 2


def test_the_tokenizer_is_trained_on_the_documents_the_corpus_reads(tmp_path):
    """JSON lines in a directory (and Parquet through a glob), their `body` field: the trained vocabulary is
    that of the texts alone, never of the JSON syntax around them."""
    from roberta_jax.train import pretrain
    from roberta_jax.train.config import default_config

    texts = [f"the {w} dog ran over a {w} fox" for w in ("lazy", "quick", "brown", "red", "slow")] * 20
    (tmp_path / "json").mkdir()
    with open(tmp_path / "json" / "part-0.jsonl", "w") as f:
        f.writelines(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(texts))
    pq.write_table(pa.table({"body": texts}), tmp_path / "part-0.parquet")
    expected = RobertaTokenizer.train(iter(texts), vocab_size=300, min_frequency=2).get_vocab()
    assert not {'{"', '":', "body"} & set(expected)
    for sources in (str(tmp_path / "json"), str(tmp_path / "*.parquet")):
        config = default_config()
        config.data.train_files, config.data.text_field = sources, "body"
        config.tokenizer.vocab_size = 300
        workdir = tmp_path / f"run-{len(sources)}"
        assert pretrain.load_or_train_tokenizer(config, str(workdir)).get_vocab() == expected
        assert os.path.isfile(workdir / "tokenizer" / "vocab.json")


def test_a_malformed_json_line_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "the dog"}\n\n{"text": "the fox"\n{"text": "a jam"}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 3: not valid JSON"):
        tokenize_corpus(str(path), word_tokenizer())
