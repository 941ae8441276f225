"""Fixtures shared by the task tests: the official roberta-base tokenizer, ours and `transformers`'."""

import json
from pathlib import Path

import pytest

from roberta_jax.tokenizer import RobertaTokenizer

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
