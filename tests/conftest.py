"""Shared fixtures: the official roberta-base tokenizer (ours and `transformers`'), a small training corpus."""

import json
import os
from pathlib import Path

import pytest

from roberta_jax.data.tokenizer import RobertaTokenizer

# The suite runs on the CPU even where libtpu is installed (the AOT tests use its compiler, not a TPU).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB = next((d for d in (DATA / "roberta-base", SHARED / "roberta-base") if (d / "vocab.json").exists()), None)


@pytest.fixture(scope="session")
def tok():
    """Our tokenizer from roberta-base's vocab.json + merges.txt."""
    if VOCAB is None:
        pytest.skip("no roberta-base vocab.json / merges.txt")
    return RobertaTokenizer.from_files(VOCAB / "vocab.json", VOCAB / "merges.txt")


@pytest.fixture(scope="session")
def make_hf(tok):
    """`make_hf(**kwargs)`: a `transformers.RobertaTokenizerFast` built from the same files."""
    transformers = pytest.importorskip("transformers")
    lines = (VOCAB / "merges.txt").read_text(encoding="utf-8").splitlines()
    vocab = json.loads((VOCAB / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(m.split(" ")) for m in lines[1:] if m]
    return lambda **kwargs: transformers.RobertaTokenizerFast(vocab=vocab, merges=merges, **kwargs)


@pytest.fixture(scope="session")
def hf(make_hf):
    """`transformers.RobertaTokenizerFast` built from the same files."""
    return make_hf()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus for train.py runs: the demo corpus's first 40 KB."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    with open(Path(__file__).parents[1] / "data" / "demo_corpus.txt", encoding="utf-8") as f:
        path.write_text(f.read(40_000), encoding="utf-8")
    return str(path)
