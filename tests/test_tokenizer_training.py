"""Training a byte-level BPE tokenizer (from texts, files and the command line) and the errors that name
bad training input; the trained tokenizers load in HF `transformers` and encode as it does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from roberta_jax.data.tokenizer import RobertaTokenizer
from roberta_jax.tools.tokenizer import main
from tests.test_tokenizer import PLAIN_TEXTS, TEXTS, _assert_same

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def _corpus() -> list[str]:
    subjects = ["the fox", "a dog", "my café", "the 日本 team", "our robot 🤖", "their naïve plan"]
    verbs = ["jumps over", "looks at", "writes about", "runs past", "sings to"]
    return [f"{s} {v} {o}, {i} times.\n" for i in range(40) for s in subjects for v in verbs for o in subjects[:3]]


def test_trained_tokenizer_saves_for_hf(tmp_path):
    corpus = _corpus()
    trained = RobertaTokenizer.train(iter(corpus), vocab_size=300, min_frequency=2)
    ids = [trained.bos_token_id, trained.pad_token_id, trained.eos_token_id, trained.unk_token_id]
    assert ids == [0, 1, 2, 3]
    assert trained.mask_token_id == len(trained) - 1 == 299

    # The same training through the tokenizers library's own ByteLevelBPETokenizer.
    reference = tokenizers.ByteLevelBPETokenizer()
    reference.train_from_iterator(
        corpus, vocab_size=299, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]
    )
    texts = PLAIN_TEXTS + corpus[:5]
    assert trained.encode_batch(texts, add_special_tokens=False)["input_ids"] == [
        e.ids for e in reference.encode_batch(texts)
    ]

    trained.save(tmp_path)
    hf_loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    hf_vocab_only = transformers.RobertaTokenizerFast(vocab=vocab, merges=[tuple(m.split(" ")) for m in lines[1:] if m])
    assert [hf_loaded.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [*ids, 299]
    assert len(hf_loaded) == len(hf_vocab_only) == len(trained)
    kwargs = dict(padding=True, return_offsets_mapping=True)
    _assert_same(
        trained(TEXTS, **kwargs), hf_loaded(TEXTS, **kwargs), ("input_ids", "attention_mask", "offset_mapping")
    )
    _assert_same(trained(PLAIN_TEXTS), hf_vocab_only(PLAIN_TEXTS))


def test_training_from_files_equals_training_from_texts(tmp_path):
    corpus = _corpus()
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    paths[0].write_text("".join(corpus[: len(corpus) // 2]), encoding="utf-8")
    paths[1].write_text("".join(corpus[len(corpus) // 2 :]), encoding="utf-8")
    from_files = RobertaTokenizer.train(paths, vocab_size=300)
    from_texts = RobertaTokenizer.train(iter(corpus), vocab_size=300)
    _assert_same(from_files(TEXTS), from_texts(TEXTS))
    assert len(from_files) == len(from_texts)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"caf\xe9 au lait\n", "not valid UTF-8"), (b"", "empty"), (b" \n\t\n", "empty"), (b"ok \xe6\x97", "UTF-8")],
)
def test_bad_training_file_is_named(tmp_path, capsys, content, message):
    good, bad = tmp_path / "good.txt", tmp_path / "bad file.txt"
    good.write_text("".join(_corpus()), encoding="utf-8")
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        RobertaTokenizer.train([good, bad], vocab_size=300)
    assert str(bad) in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--files", str(good), str(bad), "--vocab-size", "300", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_training_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="iter\\(texts\\)") as err:
        RobertaTokenizer.train(["some text, not a path"], vocab_size=300)
    assert "some text, not a path" in str(err.value)


def test_cli_trains_and_saves_for_hf(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(_corpus()), encoding="utf-8")
    # The documented command, run as a user runs it.
    args = [
        "train",
        "--files",
        str(corpus),
        "--vocab-size",
        "350",
        "--min-frequency",
        "2",
        "--out",
        str(tmp_path / "tok"),
    ]
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "roberta_jax.tools.tokenizer", *args]
    subprocess.run(command, cwd=repo, check=True, capture_output=True)
    ours = RobertaTokenizer.from_pretrained(tmp_path / "tok")
    hf_loaded = transformers.RobertaTokenizerFast.from_pretrained(tmp_path / "tok")
    assert len(hf_loaded) == len(ours) and hf_loaded.mask_token_id == ours.mask_token_id == len(ours) - 1
    _assert_same(ours(TEXTS), hf_loaded(TEXTS))


def _cli(*args, cwd=None):
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "roberta_jax.tools.tokenizer", *args]
    return subprocess.run(command, cwd=cwd or repo, capture_output=True, text=True, timeout=300)


def test_cli_reads_documents_as_training_does(tmp_path):
    """JSON lines through the corpus reader: the vocabulary holds the documents' text, not the JSON around it;
    globs, directories and a separator line are the corpus reader's too."""
    records = [{"content": line.strip(), "id": i} for i, line in enumerate(_corpus())]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = _cli("train", "--files", str(tmp_path / "docs" / "*.jsonl"), "--text-field", "content", "--vocab-size",
               "350", "--out", str(tmp_path / "tok"))
    assert out.returncode == 0, out.stderr[-2000:]
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text(encoding="utf-8"))
    artefacts = [t for t in vocab if '{"' in t or '":' in t or t.strip("Ġ") in ("content", "id")]
    assert not artefacts and "Ġfox" in vocab
    # A text file split at a separator line: the separator is not text to learn.
    separated = "".join(line + "<|endoftext|>\n" for line in _corpus())
    (tmp_path / "docs.txt").write_text(separated, encoding="utf-8")
    out = _cli("train", "--files", str(tmp_path / "docs.txt"), "--doc-separator", "<|endoftext|>", "--vocab-size",
               "350", "--out", str(tmp_path / "tok2"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [t for t in json.loads((tmp_path / "tok2" / "vocab.json").read_text()) if "endof" in t]


def test_cli_bad_input_is_one_line(tmp_path):
    out = _cli("train", "--files", str(tmp_path / "missing.txt"), "--vocab-size", "350", "--out", str(tmp_path / "t"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("python -m roberta_jax.tools.tokenizer: error: ") and "missing.txt" in out.stderr
    verbose = _cli("train", "--files", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t"), "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_an_invalid_tokenizer_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path}/tokenizer.json: not a valid tokenizer.json"):
        RobertaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text('{"a": 0')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=f"{tmp_path}/vocab.json / {tmp_path}/merges.txt: not a valid vocab.json"):
        RobertaTokenizer.from_pretrained(tmp_path)
