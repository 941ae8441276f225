"""Prepare reads what train.py reads (data/readers.py): text, compressed text, JSON lines (plain, .gz, .zst),
Parquet (one row group per piece) and a local dataset directory through `datasets`, giving the documents of the
in-process reader (`sources.tokenize_corpus`) token for token and in order; the same bytes for 1 and 4 workers;
one-line errors naming the file and line or row group; shards written as a stream (`shards.RowStream`)."""

import bz2
import gzip
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from roberta_jax.data import prepare, readers, shards
from roberta_jax.data.packing import PackedRows, StreamPacker, pack_documents, unpack_documents
from roberta_jax.data.sources import tokenize_corpus
from tests import test_prepare
from tests.test_prepare import REPO, files_of

L = 64
bpe = test_prepare.bpe  # the small byte-level BPE fixture of the text prepare tests


@pytest.fixture(scope="module")
def texts():
    """240 documents of 1 to 120 words, a few with a line break inside, one empty and one of spaces."""
    rng = np.random.default_rng(0)
    words = (REPO / "data" / "demo_corpus.txt").read_text(encoding="utf-8").split()[:3000]
    docs = [" ".join(rng.choice(words, rng.integers(1, 120))) for _ in range(240)]
    docs[7], docs[50], docs[51] = docs[7].replace(" ", "\n", 1), "", "   "
    return docs


def jsonl_bytes(docs, field="text"):
    return "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)).encode()


def run_prepare(sources, tok, out, workers=1, piece_bytes=4000, **kwargs):
    return prepare.prepare(sources, tok, str(out), vocab_size=600, max_seq_length=L, piece_bytes=piece_bytes,
                           num_workers=workers, progress=False, **kwargs)


def shard_rows(out, manifest):
    """The rows of every train shard, [shards] of int32 [rows, L], in order."""
    return [np.load(out / "train" / f"{e['name']}.npy").astype(np.int32) for e in manifest["splits"]["train"]["shards"]]


def assert_same_as_training(out, manifest, reference):
    """Every shard's documents, in order, are the in-process reader's, token for token; a source of one piece
    gives exactly the rows `pack_documents` makes of the reader's tokens."""
    rows, entries = shard_rows(out, manifest), manifest["splits"]["train"]["shards"]
    docs = [d for r, e in zip(rows, entries) for d in unpack_documents(PackedRows(r, e["last_row_length"], 1), 2)]
    assert len(docs) == reference.num_documents == manifest["stats"]["train/documents"]
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(doc, reference.tokens[reference.doc_offsets[i] : reference.doc_offsets[i + 1]])
    assert manifest["stats"]["train/tokens"] == reference.num_tokens
    assert manifest["stats"]["train/empty_documents"] == reference.num_empty_documents
    if len(rows) == 1:
        packed = pack_documents(reference.tokens, reference.doc_offsets, max_seq_length=L, bos_id=0, eos_id=2,
                                pad_id=1, drop_remainder=False)
        np.testing.assert_array_equal(rows[0], packed.input_ids)


@pytest.fixture(scope="module")
def corpora(texts, tmp_path_factory):
    """Each format's files of `texts` (the text files hold the non-blank ones, blank-line separated)."""
    root = tmp_path_factory.mktemp("formats")
    plain = "\n\n".join(t for t in texts if t.strip()).encode() + b"\n"
    (root / "corpus.txt").write_bytes(plain)
    (root / "corpus.txt.gz").write_bytes(gzip.compress(plain))
    (root / "corpus.txt.bz2").write_bytes(bz2.compress(plain))
    (root / "docs.jsonl").write_bytes(jsonl_bytes(texts))
    (root / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(texts)))
    (root / "gz").mkdir()
    for i in range(3):
        (root / "gz" / f"part-{i}.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(texts[i * 80 : (i + 1) * 80])))
    pq.write_table(pa.table({"id": range(len(texts)), "text": texts}), root / "docs.parquet", row_group_size=50)
    (root / "dataset").mkdir()
    for i in range(2):
        (root / "dataset" / f"train-{i}.jsonl").write_bytes(jsonl_bytes(texts[i * 120 : (i + 1) * 120]))
    return root


@pytest.fixture(scope="module")
def one_worker(corpora, bpe, tmp_path_factory):
    """(out, manifest) of a 1-worker prepare of `corpora / name`, made once per name."""
    made = {}

    def prepared(name, format="auto"):
        if name not in made:
            out = tmp_path_factory.mktemp("one") / name
            made[name] = out, run_prepare(str(corpora / name), bpe, out, format=format)
        return made[name]

    return prepared


@pytest.mark.parametrize("name, reference_name, format", [
    ("corpus.txt", "corpus.txt", "auto"),
    ("corpus.txt.gz", "corpus.txt", "auto"),
    ("corpus.txt.bz2", "corpus.txt", "auto"),
    ("docs.jsonl", "docs.jsonl", "auto"),
    ("docs.jsonl.zst", "docs.jsonl", "auto"),
    ("gz", "docs.jsonl", "auto"),
    ("docs.parquet", "docs.parquet", "auto"),
    ("dataset", "dataset", "hub"),
])
def test_prepare_gives_the_documents_training_reads(corpora, bpe, one_worker, name, reference_name, format):
    out, manifest = one_worker(name, format)
    reference = tokenize_corpus(str(corpora / reference_name), bpe, format=format)
    assert_same_as_training(out, manifest, reference)
    pieces = {"corpus.txt": 20, "docs.jsonl": 21, "gz": 3, "docs.parquet": 5, "dataset": 2}.get(name, 1)
    assert len(manifest["splits"]["train"]["shards"]) == pieces


@pytest.mark.parametrize("name, reference_name", [
    ("corpus.txt.gz", "corpus.txt"), ("docs.jsonl.zst", "docs.jsonl"), ("gz", "docs.jsonl"),
])
def test_training_reads_compressed_files_as_their_plain_copies(corpora, bpe, name, reference_name):
    compressed = tokenize_corpus(str(corpora / name), bpe)
    plain = tokenize_corpus(str(corpora / reference_name), bpe)
    np.testing.assert_array_equal(compressed.doc_offsets, plain.doc_offsets)
    np.testing.assert_array_equal(compressed.tokens, plain.tokens)
    assert compressed.num_empty_documents == plain.num_empty_documents


@pytest.mark.parametrize("name", ["gz", "docs.parquet"])
def test_four_workers_write_the_bytes_one_writes(corpora, bpe, one_worker, tmp_path, name):
    out, one = one_worker(name)
    four = run_prepare(str(corpora / name), bpe, tmp_path / "four", workers=4)
    assert one == four and len(one["splits"]["train"]["shards"]) >= 3
    assert files_of(out) == files_of(tmp_path / "four")


def test_bad_records_are_one_line_errors_naming_file_and_line(bpe, texts, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = jsonl_bytes(texts[:30]).splitlines(keepends=True)
    bad.write_bytes(b"".join(lines[:25] + [b'{"id": 25, "body": "no text"}\n'] + lines[26:]))
    fields = r"\(the record's fields: \['body', 'id'\]\)"
    with pytest.raises(ValueError, match=rf"^{bad}, line 26: no field 'text' {fields}"):
        run_prepare(str(bad), bpe, tmp_path / "out", piece_bytes=1000)  # line 26 is in the piece after the first
    assert not (tmp_path / "out" / shards.MANIFEST).exists()
    # The pieces read whole are complete shards (a rerun keeps them); the failed one left no file.
    npy, records = ({p.stem for p in (tmp_path / "out" / "train").glob(f"*.{e}")} for e in ("npy", "json"))
    offset = sum(map(len, lines[:25]))
    pieces = readers.plan_pieces(str(bad), readers.Reading(), 1000)
    failed = next(i for i, p in enumerate(pieces) if p.start <= offset < p.stop)
    assert pieces[failed].start > 0 and len(pieces) > failed + 1
    assert npy == records and shards.shard_name(failed) not in npy and not list((tmp_path / "out").rglob("*partial*"))
    bad.write_bytes(b"".join(lines[:3] + [b'{"text": 7}\n']))
    with pytest.raises(ValueError, match=rf"^{bad}, line 4: field 'text' is int, not a string$"):
        run_prepare(str(bad), bpe, tmp_path / "out")
    with pytest.raises(ValueError, match=r"docs.parquet, row group 0: field 'body' is int64, not a string"):
        pq.write_table(pa.table({"body": [1, 2]}), tmp_path / "docs.parquet")
        run_prepare(str(tmp_path / "docs.parquet"), bpe, tmp_path / "out2", text_field="body")


def test_corrupt_and_empty_sources_are_one_line_errors_naming_the_file(bpe, texts, tmp_path):
    data = gzip.compress(jsonl_bytes(texts))
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"^{bad_gz}: not a readable \.gz file \(Compressed file ended"):
        run_prepare(str(bad_gz), bpe, tmp_path / "out")
    bad_gz.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:60]) + data[60:])
    with pytest.raises(ValueError, match=rf"^{bad_gz}: not a readable \.gz file"):
        run_prepare(str(bad_gz), bpe, tmp_path / "out")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer, row_group_size=100, compression="none")
    parquet = buffer.getvalue()
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(parquet[: len(parquet) // 2])
    with pytest.raises(ValueError, match=rf"^{bad_parquet}: not a readable Parquet file"):
        run_prepare(str(bad_parquet), bpe, tmp_path / "out")
    start = pq.ParquetFile(io.BytesIO(parquet)).metadata.row_group(1).column(0).data_page_offset
    bad_parquet.write_bytes(parquet[:start] + b"\xff" * 64 + parquet[start + 64 :])
    with pytest.raises(ValueError, match=rf"^{bad_parquet}, row group 1: not readable"):
        run_prepare(str(bad_parquet), bpe, tmp_path / "out")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.jsonl: file is empty"):
        run_prepare(str(tmp_path / "empty.jsonl"), bpe, tmp_path / "out")
    (tmp_path / "blank.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(["", "  "])))
    with pytest.raises(ValueError, match=r"blank.jsonl.gz'\]?: no non-empty documents \(2 empty ones\)"):
        run_prepare([str(tmp_path / "blank.jsonl.gz")], bpe, tmp_path / "out")
    assert not (tmp_path / "out" / shards.MANIFEST).exists()


def test_pieces_are_planned_in_order_from_the_files_alone(corpora):
    reading = readers.Reading()
    pieces = readers.plan_pieces(str(corpora / "docs.parquet"), reading, 4000)
    assert [(p.kind, p.start, p.stop) for p in pieces] == [("parquet", g, g + 1) for g in range(5)]
    pieces = readers.plan_pieces([str(corpora / "gz"), str(corpora / "docs.jsonl")], reading, 4000)
    sizes = [(corpora / "gz" / f"part-{i}.jsonl.gz").stat().st_size for i in range(3)]
    assert [(p.kind, p.start, p.stop) for p in pieces[:3]] == [("json", 0, size) for size in sizes]
    text = (corpora / "docs.jsonl").read_bytes()
    starts = [p.start for p in pieces[3:]]
    assert starts[0] == 0 and all(text[s - 1 : s] == b"\n" and s - prev >= 4000 for prev, s in zip(starts, starts[1:]))
    assert pieces == readers.plan_pieces([str(corpora / "gz"), str(corpora / "docs.jsonl")], reading, 4000)
    with pytest.raises(ValueError, match="mix formats \\['json', 'parquet'\\]; pass one format at a time"):
        readers.plan_pieces([str(corpora / "gz"), str(corpora / "docs.parquet")], reading, 4000)


@pytest.mark.parametrize("rows", [0, 1, 37, 2000])
def test_row_stream_writes_the_bytes_of_np_save(tmp_path, rows):
    array = (np.arange(rows * 8) % 65_000).reshape(rows, 8).astype(np.uint16)
    with shards.RowStream(str(tmp_path / "rows.npy"), 8, "uint16") as out:
        for start in range(0, rows, 300):
            out.write(array[start : start + 300].astype(np.int32))
    expected = io.BytesIO()
    np.save(expected, array)
    assert (tmp_path / "rows.npy").read_bytes() == expected.getvalue()
    with pytest.raises(RuntimeError), shards.RowStream(str(tmp_path / "gone.npy"), 8, "uint16") as out:
        out.write(array[:1])
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy"]


def test_stream_packer_makes_the_rows_of_pack_documents():
    rng = np.random.default_rng(3)
    for _ in range(50):
        docs = [rng.integers(5, 600, rng.integers(1, 40)).tolist() for _ in range(rng.integers(1, 30))]
        length = int(rng.integers(3, 24))
        out = []
        packer = StreamPacker(length, bos_id=0, eos_id=2, pad_id=1, emit=out.append)
        cuts = sorted(rng.choice(len(docs) + 1, 3))
        for a, b in zip([0, *cuts], [*cuts, len(docs)]):
            packer.add(docs[a:b])
        last = packer.finish()
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        expected = pack_documents(np.concatenate(docs), offsets, max_seq_length=length, bos_id=0, eos_id=2,
                                  pad_id=1, drop_remainder=False)
        np.testing.assert_array_equal(np.concatenate(out), expected.input_ids)
        assert (last, packer.num_rows) == (expected.last_row_length, expected.num_rows)


def test_the_command_line_reads_json_lines_by_the_configs_text_field(texts, tmp_path):
    """`data.format` and `data.text_field` reach prepare (the tokenizer is trained on the same field)."""
    (tmp_path / "docs.jsonl").write_bytes(jsonl_bytes(texts, field="body"))
    run = subprocess.run(
        [sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py",
         f"--out={tmp_path / 'out'}", f"--config.data.train_files={tmp_path / 'docs.jsonl'}", "--num_workers=1",
         "--config.data.text_field=body", "--config.data.eval_fraction=0", "--config.progress=False"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"), capture_output=True,
        text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = shards.read_manifest(tmp_path / "out")
    assert (manifest["text_field"], manifest["stats"]["train/documents"]) == ("body", len(texts) - 2)


def test_a_tokenizer_is_trained_on_the_texts_of_a_compressed_corpus(corpora, texts):
    """`sources.document_texts` (what prepare trains a tokenizer on without tokenizer.path) reads .zst and
    .gz files as prepare does: the non-blank documents, in order."""
    from roberta_jax.data.sources import document_texts

    expected = [t for t in texts if t.strip()]
    assert list(document_texts(str(corpora / "docs.jsonl.zst"))) == expected
    assert list(document_texts(str(corpora / "gz"))) == expected
    assert list(document_texts(str(corpora / "corpus.txt.gz"))) == list(document_texts(str(corpora / "corpus.txt")))
