"""Inputs on `gs://` (a GCS emulator) read exactly as the same files on local disk: training files (a file, a
directory, a glob; text, JSON lines; prepare's .jsonl.gz and Parquet), prepared shards, tokenizer and HF
directories, fine-tuning weights and task files, and the tools; a half-written directory, a missing file or
bucket are errors that name them."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from roberta_jax import storage
from roberta_jax.data import prepare, shards, sources, text_files
from roberta_jax.data.sentencepiece import SentencePieceTokenizer
from roberta_jax.data.tokenizer import RobertaTokenizer, is_tokenizer_dir, load_tokenizer
from roberta_jax.finetune import weights
from roberta_jax.finetune.tasks import classification, ner, qa
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig, preset
from roberta_jax.model.heads import RobertaForMaskedLM, RobertaForSequenceClassification, init_params
from roberta_jax.tools import convert, events, explore, sweep
from roberta_jax.tools import tokenizer as tokenizer_cli
from roberta_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_DATA = os.path.join(REPO, "tests", "data", "tasks")
TEXTS = ["The capital of France is <mask>.", "First Citizen: before we proceed any further, hear me speak."]
MISSING_BUCKET = "gs://no-such-bucket-inputs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A local corpus directory: in text/, blank-line documents in two files (one with CRLF, one a level down) and
    a hidden file that sources skip; in json/, JSON lines."""
    root = tmp_path_factory.mktemp("corpus")
    with open(os.path.join(REPO, "data", "demo_corpus.txt"), encoding="utf-8") as f:
        paragraphs = [p for p in f.read(30_000).split("\n\n") if p.strip()]
    for sub in ("text/sub", "json"):
        (root / sub).mkdir(parents=True)
    (root / "text" / "a.txt").write_text("\n\n".join(paragraphs[::2]), encoding="utf-8")
    (root / "text" / "sub" / "b.txt").write_bytes("\r\n\r\n".join(paragraphs[1::2]).replace("\n", "\r\n").encode())
    (root / "text" / ".notes.txt").write_text("never read", encoding="utf-8")
    records = "".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(paragraphs))
    (root / "json" / "docs.jsonl").write_text(records, encoding="utf-8")
    return str(root)


@pytest.fixture(scope="module")
def tok(corpus):
    """A byte-level BPE of 400 ids trained on the corpus (no download, and quick)."""
    return RobertaTokenizer.train(os.path.join(corpus, "text", "a.txt"), vocab_size=400)


@pytest.fixture
def remote_corpus(bucket, corpus):
    storage.upload_dir(corpus, f"{bucket}/corpus")
    return f"{bucket}/corpus"


def test_training_files_on_gs_give_the_same_token_ids(corpus, remote_corpus, tok, tmp_path):
    cache = str(tmp_path / "cache")
    for name in ("text/a.txt", "text", "text/**/*.txt", "json/docs.jsonl", "json"):
        local, remote = f"{corpus}/{name}", f"{remote_corpus}/{name}"
        expected = sources.tokenize_corpus(local, tok, cache_dir=None)
        got = sources.tokenize_corpus(remote, tok, cache_dir=cache)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        np.testing.assert_array_equal(got.doc_offsets, expected.doc_offsets)
        assert sources.tokenize_corpus(remote, tok, cache_dir=cache).from_cache
        assert list(sources.document_texts(remote)) == list(sources.document_texts(local))
    names = ("json/docs.jsonl", "text/a.txt", "text/sub/b.txt")  # sorted; the hidden file left out
    assert text_files.resolve_files(remote_corpus) == [f"{remote_corpus}/{n}" for n in names]
    assert os.listdir(os.path.join(cache, "staged"))  # JSON lines were read from a local copy in the data cache
    # The cache key holds the object's generation: a rewrite of the same size is tokenized anew.
    text = storage.read_text(f"{remote_corpus}/text/a.txt")
    storage.write_text(f"{remote_corpus}/text/a.txt", text[::-1])
    again = sources.tokenize_corpus(f"{remote_corpus}/text/a.txt", tok, cache_dir=cache)
    assert not again.from_cache
    assert again.num_tokens != sources.tokenize_corpus(f"{corpus}/text/a.txt", tok).num_tokens
    with pytest.raises(ValueError, match=f"cache_dir={remote_corpus}/cache: .* must be a local directory"):
        sources.tokenize_corpus(remote_corpus, tok, cache_dir=f"{remote_corpus}/cache")


def test_bad_remote_inputs_are_named_before_any_tokenization(bucket, tok):
    with pytest.raises(storage.StorageError, match=f"{MISSING_BUCKET}/corpus: bucket {MISSING_BUCKET} does not"):
        sources.tokenize_corpus(f"{MISSING_BUCKET}/corpus", tok)
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nothing.txt: no such file, directory or glob match"):
        sources.tokenize_corpus(f"{bucket}/nothing.txt", tok)
    with pytest.raises(storage.StorageError, match="two slashes"):
        text_files.resolve_files(f"gs:/{bucket[5:]}/x.txt")
    storage.write_bytes(f"{bucket}/latin1.txt", "café".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{bucket}/latin1.txt: not valid UTF-8"):
        sources.tokenize_corpus(f"{bucket}/latin1.txt", tok)
    with pytest.raises(FileNotFoundError, match=f"{bucket}/hf is neither a pretraining workdir"):
        explore.load_checkpoint(f"{bucket}/hf")


def test_prepare_to_gs_reads_back_as_a_local_prepare(corpus, remote_corpus, tmp_path):
    out = f"{remote_corpus[:-len('corpus')]}prepared"
    cmd = [sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/tiny.py", f"--out={out}",
           f"--config.data.train_files={remote_corpus}/text", "--config.data.eval_fraction=0",
           "--config.tokenizer.vocab_size=300", "--config.data.max_seq_length=32", "--config.progress=False",
           "--num_workers=1", "--piece_mb=0.004"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = shards.read_manifest(out)
    saved = f"{out}/{shards.TOKENIZER}"  # trained on the remote corpus, saved whole beside the shards
    assert is_tokenizer_dir(saved) and not storage.exists(f"{saved}/{storage.INCOMPLETE}")
    local = prepare.prepare(f"{corpus}/text", load_tokenizer(saved), str(tmp_path / "prepared"),
                            vocab_size=manifest["vocab_size"], max_seq_length=32, piece_bytes=manifest["piece_bytes"],
                            progress=False)
    assert local["stats"] == manifest["stats"] and len(manifest["splits"]["train"]["shards"]) > 1
    remote_rows, local_rows = shards.ShardedRows(out), shards.ShardedRows(tmp_path / "prepared")
    rows = np.arange(local_rows.num_rows)
    np.testing.assert_array_equal(remote_rows.take(rows), local_rows.take(rows))
    np.testing.assert_array_equal(remote_rows.row_lengths(rows), local_rows.row_lengths(rows))
    assert not storage.glob_files(f"{out}/train/*.partial-*")


@pytest.fixture
def hf_dirs(bucket, tok, tmp_path):
    """A tiny masked LM with its tokenizer saved locally by `hf_io.save_hf`, and the same directory on gs://."""
    model = RobertaForMaskedLM(preset("micro", vocab_size=tok.vocab_size, architectures=("RobertaForMaskedLM",)))
    local = str(tmp_path / "hf")
    hf_io.save_hf(local, model, init_params(model, jax.random.key(0)), tokenizer=tok)
    storage.upload_dir(local, f"{bucket}/hf")
    return local, f"{bucket}/hf"


def assert_same_tree(a, b):
    a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_tokenizer_and_hf_directories_load_from_gs(hf_dirs, bucket, tok, spm_dir):
    local, remote = hf_dirs
    assert load_tokenizer(remote)(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    tok.save(f"{bucket}/tok")  # saved straight to the bucket
    assert storage.listdir(f"{bucket}/tok") == ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                                                "tokenizer_config.json", "vocab.json"]
    assert load_tokenizer(f"{bucket}/tok")(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    storage.upload_dir(str(spm_dir), f"{bucket}/spm")
    spm = SentencePieceTokenizer.from_pretrained(f"{bucket}/spm")
    assert spm(TEXTS)["input_ids"] == SentencePieceTokenizer.from_pretrained(spm_dir)(TEXTS)["input_ids"]
    params, model, report = hf_io.load_hf(remote, RobertaForMaskedLM, strict=True)
    expected, _, _ = hf_io.load_hf(local, RobertaForMaskedLM, strict=True)
    assert_same_tree(params, expected)
    assert model.config == RobertaConfig.from_json_file(local)
    remote_ckpt, local_ckpt = explore.load_checkpoint(remote), explore.load_checkpoint(local)
    assert remote_ckpt.kind == "hf" and remote_ckpt.path == remote
    assert explore.fill_mask(remote_ckpt, TEXTS[:1]) == explore.fill_mask(local_ckpt, TEXTS[:1])


def test_a_half_written_hf_directory_is_refused_naming_it(hf_dirs):
    _, remote = hf_dirs
    storage.write_bytes(f"{remote}/{storage.INCOMPLETE}", b"")
    for read in (lambda: hf_io.load_hf(remote, RobertaForMaskedLM), lambda: hf_io.read_safetensors(remote),
                 lambda: RobertaConfig.from_json_file(remote), lambda: load_tokenizer(remote),
                 lambda: weights.initial_config(remote), lambda: explore.load_checkpoint(remote)):
        with pytest.raises(storage.StorageError, match=f"^{remote} is half-written"):
            read()


def test_finetuning_weights_and_task_files_from_gs(hf_dirs, bucket):
    local, remote = hf_dirs
    config = weights.initial_config(remote).replace(num_labels=3)
    assert config == weights.initial_config(local).replace(num_labels=3)
    fresh = init_params(RobertaForSequenceClassification(config), jax.random.key(1))
    (params, report), (expected, _) = weights.load_initial(remote, fresh), weights.load_initial(local, fresh)
    assert_same_tree(params, expected)
    assert report.missing and not report.mismatched  # the new head
    assert weights.tokenizer_dir(remote) == remote
    for name in ("sst2.tsv", "rte.csv", "stsb.jsonl", "conll.txt", "squad.json"):
        storage.copy_file(os.path.join(TASK_DATA, name), f"{bucket}/tasks/{name}")
    for name in ("sst2.tsv", "rte.csv", "stsb.jsonl"):
        assert (classification.read_numbered_rows(f"{bucket}/tasks/{name}")
                == classification.read_numbered_rows(os.path.join(TASK_DATA, name)))
        assert (classification.load_examples(f"{bucket}/tasks/{name}")
                == classification.load_examples(os.path.join(TASK_DATA, name)))
    assert ner.load_examples(f"{bucket}/tasks/conll.txt") == ner.load_examples(os.path.join(TASK_DATA, "conll.txt"))
    assert qa.load_examples(f"{bucket}/tasks/squad.json") == qa.load_examples(os.path.join(TASK_DATA, "squad.json"))
    with pytest.raises(FileNotFoundError, match=f"{bucket}/tasks/dev.tsv: no such file"):
        classification.load_examples(f"{bucket}/tasks/dev.tsv")
    with pytest.raises(storage.StorageError, match=f"{MISSING_BUCKET}/hf: bucket {MISSING_BUCKET} does not"):
        weights.initial_config(f"{MISSING_BUCKET}/hf")


def test_convert_between_gs_directories(hf_dirs, bucket, tmp_path):
    local, remote = hf_dirs
    convert.main(["from-hf", remote, f"{bucket}/orbax"])
    convert.main(["to-hf", f"{bucket}/orbax", f"{bucket}/back"])
    storage.check_whole(f"{bucket}/back")
    assert set(storage.listdir(f"{bucket}/back")) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert_same_tree(hf_io.read_safetensors(f"{bucket}/back"), hf_io.read_safetensors(local))


def test_tools_read_and_write_gs(bucket, corpus, remote_corpus, tmp_path):
    for files, out in ((f"{remote_corpus}/text", f"{bucket}/tk"), (f"{corpus}/text", str(tmp_path / "tk"))):
        tokenizer_cli.main(["train", "--files", files, "--vocab-size", "350", "--out", out])
    assert (storage.read_text(f"{bucket}/tk/vocab.json") == (tmp_path / "tk" / "vocab.json").read_text()
            and storage.listdir(f"{bucket}/tk") == sorted(os.listdir(tmp_path / "tk")))
    # Two runs' logs (TensorBoard events and metrics.jsonl) written locally, read from the bucket.
    sweep_dir = f"{bucket}/sweep"
    for run, losses in (("lr=1", [3.0, 2.0]), ("lr=2", [3.0, 1.0])):
        writer = metrics.MetricWriter(str(tmp_path / "sweep" / run), enabled=True)
        for step, loss in enumerate(losses, 1):
            writer.write(step, {"train/loss": loss, "eval/loss": loss + 0.5})
        writer.close()
    storage.upload_dir(str(tmp_path / "sweep"), sweep_dir)
    assert events.event_files(f"{sweep_dir}/lr=1") and events.find_logdir(f"{sweep_dir}/lr=1/hf") == f"{sweep_dir}/lr=1"
    assert events.read_scalars(f"{sweep_dir}/lr=2", source="jsonl")["eval/loss"][1].tolist() == [3.5, 1.5]
    rows = sweep.summarize(sweep_dir)
    assert [(r.name, r.best, r.steps) for r in rows] == [("lr=2", 1.5, 2), ("lr=1", 2.5, 2)]
    sweep.save_plot(rows, "eval/loss", f"{sweep_dir}/eval_loss.png")
    assert storage.read_bytes(f"{sweep_dir}/eval_loss.png").startswith(b"\x89PNG")


def test_compressed_json_lines_and_parquet_on_gs_prepare_as_local_ones(corpus, bucket, tok, tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(os.path.join(corpus, "json", "docs.jsonl"), "rb") as f:
        records = f.read()
    texts = [json.loads(line)["text"] for line in records.splitlines()]
    local = tmp_path / "in"
    local.mkdir()
    (local / "docs.jsonl.gz").write_bytes(gzip.compress(records))
    pq.write_table(pa.table({"text": texts}), local / "docs.parquet", row_group_size=10)
    storage.upload_dir(str(local), f"{bucket}/formats")
    for name in ("docs.jsonl.gz", "docs.parquet"):
        made = [prepare.prepare(src, tok, str(tmp_path / f"{name}-{where}"), vocab_size=400, max_seq_length=32,
                                progress=False)
                for where, src in (("local", str(local / name)), ("gs", f"{bucket}/formats/{name}"))]
        assert made[0]["splits"] == made[1]["splits"] and made[0]["stats"]["train/documents"] == len(texts)
        shard_files = [sorted((tmp_path / f"{name}-{where}" / "train").glob("*.npy")) for where in ("local", "gs")]
        assert [p.read_bytes() for p in shard_files[0]] == [p.read_bytes() for p in shard_files[1]]
    assert len(made[0]["splits"]["train"]["shards"]) == -(-len(texts) // 10)
