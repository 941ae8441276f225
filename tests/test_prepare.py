"""Prepared data (data/prepare.py, data/shards.py): the same rows whatever the number of workers, every document
once and in order, restart after SIGKILL, and the checks of a prepared directory against a run."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from roberta_jax.data import prepare, shards
from roberta_jax.data.batches import BatchIterator
from roberta_jax.data.encoders import resolve_tokenizer
from roberta_jax.data.packing import PackedRows, unpack_documents
from roberta_jax.data.sources import tokenize_corpus

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus"
L = 64


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE with RoBERTa's special ids (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([(REPO / "data" / "demo_corpus.txt").read_text(encoding="utf-8")[:200_000]], trainer)
    return tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """../shared/data/corpus, else generated text in three files (blank-line documents, CRLF in one)."""
    if SHARED_CORPUS.is_dir():
        return str(SHARED_CORPUS)
    root = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    words = (REPO / "data" / "demo_corpus.txt").read_text(encoding="utf-8").split()[:5000]
    for i in range(3):
        docs = [" ".join(rng.choice(words, rng.integers(1, 400))) for _ in range(300)]
        newline = "\r\n" if i == 1 else "\n"
        (root / f"part-{i}.txt").write_bytes((newline * 2).join(docs).encode())
    return str(root)


EVAL_DOCS = ["A held-out first document,\nof two lines.", "The second", "and  the third one."]


def run_prepare(corpus, tok, out, num_workers, piece_bytes=200_000, eval_sources=None):
    return prepare.prepare(corpus, tok, str(out), vocab_size=600, max_seq_length=L, piece_bytes=piece_bytes,
                           num_workers=num_workers, eval_sources=eval_sources, progress=False)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "heldout.txt"
    path.write_text("\n\n".join(EVAL_DOCS) + "\n", encoding="utf-8")
    return str(path)


def files_of(directory):
    """Every file under `directory` by relative path, with its bytes."""
    root = pathlib.Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_worker(corpus, bpe, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "prepared"
    return out, run_prepare(corpus, bpe, out, num_workers=1, eval_sources=heldout)


def test_four_workers_write_what_one_writes_and_every_document_once_in_order(corpus, bpe, heldout, one_worker,
                                                                            tmp_path):
    out, manifest = one_worker
    four = run_prepare(corpus, bpe, tmp_path / "four", num_workers=4, eval_sources=heldout)
    assert four == manifest
    assert files_of(tmp_path / "four") == files_of(out)

    shard_list = manifest["splits"]["train"]["shards"]
    assert len(shard_list) >= 6 and manifest["dtype"] == "uint16"
    docs = []
    for entry in shard_list:
        rows = np.load(out / "train" / f"{entry['name']}.npy")
        assert rows.dtype == np.uint16 and rows.shape == (entry["rows"], L)
        docs += unpack_documents(PackedRows(rows.astype(np.int32), entry["last_row_length"], 1), 2)
    # The in-process reader (text_documents, datasets.map) as the reference.
    reference = tokenize_corpus(corpus, bpe)
    assert len(docs) == reference.num_documents == manifest["stats"]["train/documents"]
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(doc, reference.tokens[reference.doc_offsets[i] : reference.doc_offsets[i + 1]])
    assert manifest["stats"]["train/tokens"] == reference.num_tokens
    assert manifest["stats"]["train/padding"] == sum(L - e["last_row_length"] for e in shard_list) > 0

    eval_rows = shards.ShardedRows(out, "eval")
    stream = [bpe.encode(d, add_special_tokens=False).ids for d in EVAL_DOCS]
    stream = [0, *stream[0], 2, *stream[1], 2, *stream[2], 2]
    assert (eval_rows.num_rows, manifest["stats"]["eval/documents"]) == (1, 3)
    np.testing.assert_array_equal(eval_rows.take([0])[0], stream + [1] * (L - len(stream)))
    assert eval_rows.row_lengths([0]).tolist() == [len(stream)]


def test_sigkill_during_prepare_then_rerun_gives_identical_files(corpus, bpe, heldout, one_worker, tmp_path):
    out, manifest = one_worker
    killed = tmp_path / "killed"
    bpe.save(str(tmp_path / "bpe.json"))
    script = (f"from tokenizers import Tokenizer\nfrom tests.test_prepare import run_prepare\n"
              f"run_prepare({corpus!r}, Tokenizer.from_file({str(tmp_path / 'bpe.json')!r}), {str(killed)!r}, 1, "
              f"eval_sources={heldout!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.time()
    while len(list((killed / "train").glob("*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() - start < 120
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its Dask workers
    proc.wait()
    assert not (killed / shards.MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        shards.ShardedRows(killed)
    # A leftover temporary file, and a shard whose record was never written, as a kill can leave them.
    recorded = {p.stem for p in (killed / "train").glob("shard-*.json")}
    unrecorded = sorted({p.stem for p in (out / "train").glob("shard-*.npy")} - recorded)
    assert unrecorded, "the kill came after every shard was written"
    (killed / "train" / f".{unrecorded[0]}.npy.tmp-0").write_bytes(b"\x93NUMPY half")
    (killed / "train" / f"{unrecorded[-1]}.npy").write_bytes(b"\x93NUMPY half")
    assert run_prepare(corpus, bpe, killed, num_workers=2, eval_sources=heldout) == manifest
    assert files_of(killed) == files_of(out)


def test_rerun_with_other_settings_names_the_field(corpus, bpe, heldout, one_worker):
    out, _ = one_worker
    with pytest.raises(ValueError, match="max_seq_length=64, this prepare has 32"):
        prepare.prepare(corpus, bpe, str(out), vocab_size=600, max_seq_length=32, piece_bytes=200_000,
                        eval_sources=heldout)


def test_bad_files_are_errors_naming_them(bpe, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the first document\n\n" + b"caf\xe9 second\n")
    with pytest.raises(ValueError, match=f"{bad}: not valid UTF-8 .* at byte 23"):
        run_prepare(str(bad), bpe, tmp_path / "out", num_workers=1, piece_bytes=10)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt: file is empty"):
        run_prepare(str(tmp_path / "empty.txt"), bpe, tmp_path / "out", num_workers=1)


def test_a_separator_line_splits_documents_as_training_does(bpe, tmp_path):
    """TinyStories' layout: documents (some with blank lines inside) between `<|endoftext|>` lines; pieces
    of 2 kB are cut only after a separator line, and the shards hold the documents training reads."""
    rng = np.random.default_rng(1)
    words = (REPO / "data" / "demo_corpus.txt").read_text(encoding="utf-8").split()[:2000]
    docs = ["\n\n".join(" ".join(rng.choice(words, rng.integers(1, 30))) for _ in range(rng.integers(1, 3)))
            for _ in range(200)]
    corpus = tmp_path / "stories.txt"
    corpus.write_text("".join(f"{d}\n{' ' * (i % 2)}<|endoftext|>\n" for i, d in enumerate(docs)), encoding="utf-8")
    manifest = prepare.prepare(str(corpus), bpe, str(tmp_path / "out"), vocab_size=600, max_seq_length=L,
                               doc_separator="<|endoftext|>", piece_bytes=2000, progress=False)
    shard_list = manifest["splits"]["train"]["shards"]
    assert len(shard_list) >= 5 and manifest["doc_separator"] == "<|endoftext|>"
    unpacked = []
    for entry in shard_list:
        rows = np.load(tmp_path / "out" / "train" / f"{entry['name']}.npy").astype(np.int32)
        unpacked += unpack_documents(PackedRows(rows, entry["last_row_length"], 1), 2)
    reference = tokenize_corpus(str(corpus), bpe, doc_separator="<|endoftext|>", cache_dir=str(tmp_path / "cache"))
    assert len(unpacked) == reference.num_documents == len(docs) == manifest["stats"]["train/documents"]
    for i, doc in enumerate(unpacked):
        np.testing.assert_array_equal(doc, reference.tokens[reference.doc_offsets[i] : reference.doc_offsets[i + 1]])


def test_the_command_line_prints_a_bad_config_field_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py",
                          f"--out={tmp_path / 'out'}", "--config.data.eval_fraction=0.1"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "python -m roberta_jax.tools.prepare: error: data.eval_fraction=0.1 does not apply to prepared data")


def prepare_command(tmp_path, *overrides):
    """`python -m roberta_jax.tools.prepare` on 20 kB of the demo corpus into tmp_path/out: its completed process."""
    corpus = tmp_path / "small.txt"
    if not corpus.exists():
        corpus.write_text((REPO / "data" / "demo_corpus.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py",
                           f"--out={tmp_path / 'out'}", f"--config.data.train_files={corpus}", "--num_workers=1",
                           "--config.data.eval_fraction=0", "--config.progress=False", *overrides],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)


def test_a_rerun_with_other_tokenizer_training_settings_names_them(tmp_path):
    """OUT/tokenizer, trained by the first prepare, is reused only with the settings it was trained with."""
    first = prepare_command(tmp_path, "--config.tokenizer.vocab_size=500")
    assert first.returncode == 0, first.stderr[-3000:]
    rerun = prepare_command(tmp_path, "--config.tokenizer.vocab_size=600", "--config.tokenizer.min_frequency=3",
                            "--config.tokenizer.kind=unigram")
    assert rerun.returncode == 2, rerun.stderr[-3000:]
    saved = tmp_path / "out" / "tokenizer"
    assert rerun.stderr.strip().splitlines()[-1] == (
        f"python -m roberta_jax.tools.prepare: error: the tokenizer in {saved} was trained with other settings; "
        "this prepare changes tokenizer.kind: 'byte_level_bpe' -> 'unigram', tokenizer.vocab_size: 500 -> 600, "
        f"tokenizer.min_frequency: 2 -> 3. Rerun with the values in {saved / 'trained_with.json'}, or choose "
        f"another --out or delete {tmp_path / 'out'}.")


def test_a_source_edited_in_place_to_the_same_size_is_redone_or_named(bpe, tmp_path):
    """Sources are known by path, size and version: an edit that keeps the byte count is seen by the shards'
    records (an unfinished prepare redoes them) and by the manifest (a rerun into a finished one stops)."""
    corpus = tmp_path / "small.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n")
    first = run_prepare(str(corpus), bpe, tmp_path / "out", num_workers=1)
    shard = tmp_path / "out" / "train" / "shard-00000.npy"
    before = np.load(shard)
    corpus.write_text(corpus.read_text().replace("Citizen", "CITIZEN"))
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a filesystem's coarse clock aside
    assert first["sources"]["train"][0][1] == stat.st_size
    with pytest.raises(ValueError, match=re.escape(f"out is already prepared with other source files: {corpus} "
                                                   "(train) was written since")):
        run_prepare(str(corpus), bpe, tmp_path / "out", num_workers=1)
    (tmp_path / "out" / shards.MANIFEST).unlink()  # as if the first prepare had been killed before its end
    run_prepare(str(corpus), bpe, tmp_path / "out", num_workers=1)
    assert not np.array_equal(np.load(shard), before)


def test_a_missing_or_truncated_shard_or_a_corrupt_manifest_is_named_before_any_read(one_worker, corpus, bpe,
                                                                                     heldout, tmp_path):
    out, manifest = one_worker
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    names = [e["name"] for e in manifest["splits"]["train"]["shards"]]
    (damaged / "train" / f"{names[3]}.npy").unlink()
    missing = (f"prepared directory {damaged} is damaged: train/{names[3]}.npy is missing, manifest.json lists "
               f"{manifest['splits']['train']['shards'][3]['rows']} rows of 64 uint16 ids")
    with pytest.raises(ValueError, match=re.escape(missing)) as error:
        shards.ShardedRows(damaged)
    assert f"delete {damaged / 'train' / names[3]}.json and {damaged / 'manifest.json'} and rerun" in str(error.value)
    with pytest.raises(ValueError, match=re.escape(missing)):  # a rerun of the prepare too
        run_prepare(corpus, bpe, damaged, num_workers=1, eval_sources=heldout)
    shutil.copy(out / "train" / f"{names[3]}.npy", damaged / "train")
    truncated = damaged / "train" / f"{names[1]}.npy"
    truncated.write_bytes(truncated.read_bytes()[:-L])
    with pytest.raises(ValueError, match=f"train/{names[1]}.npy is {truncated.stat().st_size} bytes"):
        shards.ShardedRows(damaged)
    (damaged / shards.MANIFEST).write_text('{"format_version": 1,\n')
    with pytest.raises(ValueError, match=re.escape(f"{damaged / 'manifest.json'} is damaged (Expecting")):
        shards.ShardedRows(damaged)


def test_wrong_tokenizer_or_row_length_names_both_values(one_worker, bpe):
    out, manifest = one_worker
    fingerprint = resolve_tokenizer(bpe).fingerprint
    shards.check_manifest(manifest, str(out), fingerprint, L)
    with pytest.raises(ValueError, match=f"max_seq_length={L}.*data.max_seq_length=128"):
        shards.check_manifest(manifest, str(out), fingerprint, 128)
    with pytest.raises(ValueError, match=f"tokenizer {fingerprint[:16]}.*this run's tokenizer is 0123456789abcdef"):
        shards.check_manifest(manifest, str(out), "0123456789abcdef" * 4, L)


def test_each_host_reads_only_its_rows_of_the_same_batches(one_worker):
    """Two hosts' readers against one host's: together the same global batches, disjoint halves, and each
    host reads only the rows of its half (read-ahead on)."""
    out, manifest = one_worker
    rows = shards.ShardedRows(out)
    assert rows.num_rows == manifest["stats"]["train/rows"]
    single = BatchIterator(rows, 16, seed=3, process_index=0, process_count=1)
    hosts = [shards.ShardedRows(out) for _ in range(2)]
    iters = [BatchIterator(h, 16, seed=3, process_index=i, process_count=2, read_ahead=2) for i, h in enumerate(hosts)]
    for _ in range(5):
        whole = next(single)
        halves = [next(it) for it in iters]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    state = iters[0].get_state()
    for it in iters:
        it.close()
    # 5 batches consumed and 2 read ahead, 8 rows each per host.
    assert [h.rows_read for h in hosts] == [7 * 8, 7 * 8]
    resumed = BatchIterator(shards.ShardedRows(out), 16, seed=3, process_index=0, process_count=2, read_ahead=2)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], next(single)["input_ids"][:8])


def test_padded_last_rows_of_shards_have_their_lengths(one_worker):
    out, manifest = one_worker
    rows = shards.ShardedRows(out)
    entries = manifest["splits"]["train"]["shards"]
    ends = np.cumsum([e["rows"] for e in entries]) - 1
    lengths = rows.row_lengths(np.concatenate([ends, ends - 1]))
    np.testing.assert_array_equal(lengths[: len(ends)], [e["last_row_length"] for e in entries])
    assert (lengths[len(ends) :] == L).all()
    taken = rows.take(ends[:2])
    assert (taken[0, lengths[0] :] == 1).all() and taken[0, lengths[0] - 1] == 2
