"""SentencePiece (unigram) tokenizers of XLM-R and CamemBERT on the Rust `tokenizers` library, as HF's fast ones.

Load a `sentencepiece.bpe.model` (conversion reads its protobuf: `pip install 'roberta_jax[sentencepiece]'`) or
the `tokenizer.json` of a fast tokenizer, or train a unigram vocabulary, and encode exactly as
`XLMRobertaTokenizerFast` / `CamembertTokenizerFast` (transformers 5) do:

    tok = SentencePieceTokenizer.from_pretrained("xlm-roberta-base-dir")
    tok(["안녕하세요", "Bonjour"], ["세계", "le monde"], padding=True, return_tensors="np")  # <s> A </s></s> B </s>

    python -m roberta_jax.tools.tokenizer train --kind unigram --files ko.txt --vocab-size 8000 --out DIR

The pipeline is the one transformers 5 rebuilds for both classes, whatever a tokenizer.json held: the model's
precompiled normalizer (`nmt_nfkc` for XLM-R and CamemBERT), whitespace split, `▁` prepended to every word,
a Unigram model with `<unk>` at id 3. The layouts (the fairseq dictionaries) place the SentencePiece pieces:

- "xlm-roberta": `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, pieces from the model's 4th on, `<mask>` last.
- "camembert": `<s>NOTUSED`=0, `<pad>`=1, `</s>NOTUSED`=2, `<unk>`=3, `<unk>NOTUSED`=4, the model's pieces
  from its 2nd on (so `<s>`=5, `</s>`=6), `<mask>` last (lstrip, as CamemBERT marks it).

A trained tokenizer has the "xlm-roberta" layout and no normalizer (text is segmented as written): a
`Precompiled` normalizer can only come from a SentencePiece model, and XLMRobertaTokenizerFast keeps no other.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import Unigram

from roberta_jax import storage
from roberta_jax.data.fast_tokenizer import (
    BOS,
    EOS,
    MASK,
    MODEL_MAX_LENGTH,
    PAD,
    UNK,
    FastTokenizer,
    PathLike,
    token_json,
    train_backend,
)
from roberta_jax.suggest import did_you_mean

SPM_FILE = "sentencepiece.bpe.model"
SPIECE_UNDERLINE = "▁"
UNK_ID = 3  # both layouts put <unk> at 3
Vocab = list[tuple[str, float]]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a fairseq dictionary puts the pieces of a SentencePiece model."""

    tokenizer_class: str  # HF's name, for tokenizer_config.json
    leading: tuple[tuple[str, float], ...]  # (piece, score) before the model's pieces
    first_piece: int  # the model's pieces from this index on follow `leading`
    mask_lstrip: bool
    extra_special_tokens: tuple[str, ...] = ()


LAYOUTS = {
    "xlm-roberta": Layout("XLMRobertaTokenizer", ((BOS, 0.0), (PAD, 0.0), (EOS, 0.0), (UNK, 0.0)), 3, False),
    "camembert": Layout(
        "CamembertTokenizer",
        (("<s>NOTUSED", 0.0), (PAD, 0.0), ("</s>NOTUSED", 0.0), (UNK, 0.0), ("<unk>NOTUSED", -100.0)),
        1,
        True,
        ("<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"),
    ),
}


def layout_of(model_type: str) -> Layout:
    if model_type not in LAYOUTS:
        raise ValueError(
            f"model_type={model_type!r}{did_you_mean(model_type, LAYOUTS)}: SentencePiece layouts are {list(LAYOUTS)}"
        )
    return LAYOUTS[model_type]


def _added_tokens(layout: Layout) -> list[AddedToken]:
    return [AddedToken(t, special=True, normalized=False) for t in (BOS, PAD, EOS, UNK)] + [
        AddedToken(MASK, lstrip=layout.mask_lstrip, special=True, normalized=False)
    ]


def build(vocab: Vocab, charsmap: bytes | None, layout: Layout) -> Tokenizer:
    """The XLM-R/CamemBERT pipeline around a Unigram `vocab` [(piece, log-probability)] holding the layout's
    specials, built as transformers 5's `XLMRobertaTokenizer` / `CamembertTokenizer` build theirs."""
    tok = Tokenizer(Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    metaspace = dict(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)]
    )
    tok.decoder = decoders.Metaspace(**metaspace)
    tok.add_special_tokens(_added_tokens(layout))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return tok


def read_spm(path: PathLike) -> tuple[list[tuple[str, float]], bytes]:
    """The (piece, score) list and the precompiled normalizer of a SentencePiece unigram model file."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs the sentencepiece and protobuf packages: pip install 'roberta_jax[sentencepiece]'"
        ) from e
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(storage.read_bytes(os.fspath(path)))
    except Exception as e:  # protobuf's DecodeError, and whatever a truncated file raises
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from e
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise ValueError(f"{path}: a SentencePiece {kind} model; XLM-R and CamemBERT use UNIGRAM")
    return [(p.piece, p.score) for p in proto.pieces], proto.normalizer_spec.precompiled_charsmap


def _read_tokenizer_json(path: str) -> tuple[Vocab, bytes | None]:
    """The Unigram vocabulary and precompiled charsmap of a fast tokenizer's `tokenizer.json`."""
    data = json.loads(storage.read_text(path))
    model = data.get("model") or {}
    if model.get("type") != "Unigram":
        raise ValueError(f"{path}: a {model.get('type')} model, not a SentencePiece Unigram one")
    normalizer = data.get("normalizer") or {}
    parts = normalizer.get("normalizers", [normalizer])  # a Sequence, or the one normalizer
    charsmap = next((n["precompiled_charsmap"] for n in parts if n.get("type") == "Precompiled"), None)
    return [(piece, float(score)) for piece, score in model["vocab"]], charsmap and base64.b64decode(charsmap)


def _model_type_of(directory: str, vocab: Vocab | None) -> str:
    """"camembert" or "xlm-roberta": from tokenizer_config.json's class, else the vocabulary's first piece."""
    config_path = storage.join(directory, "tokenizer_config.json")
    if storage.exists(config_path):
        cls = json.loads(storage.read_text(config_path)).get("tokenizer_class", "")
        for name, layout in LAYOUTS.items():
            if cls.removesuffix("Fast") == layout.tokenizer_class:
                return name
    return "camembert" if vocab and vocab[0][0] == "<s>NOTUSED" else "xlm-roberta"


class SentencePieceTokenizer(FastTokenizer):
    """XLM-R's or CamemBERT's SentencePiece tokenizer with HF fast tokenizers' encoding API and outputs.

    `model_type` ("xlm-roberta" or "camembert") names the layout, and the model type of a model trained on it.
    """

    kind = "unigram"

    def __init__(self, tokenizer: Tokenizer, model_type: str = "xlm-roberta", model_max_length: int = MODEL_MAX_LENGTH):
        self.model_type = model_type
        super().__init__(tokenizer, model_max_length, layout_of(model_type).extra_special_tokens)

    @classmethod
    def from_vocab(cls, vocab: Vocab, charsmap: bytes | None = None, model_type: str = "xlm-roberta"):
        """From a vocabulary already in the layout (`<mask>` included), as a tokenizer.json holds it."""
        return cls(build(vocab, charsmap, layout_of(model_type)), model_type)

    @classmethod
    def from_spm(cls, path: PathLike, model_type: str = "xlm-roberta") -> SentencePieceTokenizer:
        """From a SentencePiece unigram model file (XLM-R's and CamemBERT's `sentencepiece.bpe.model`)."""
        pieces, charsmap = read_spm(path)
        layout = layout_of(model_type)
        vocab = [*layout.leading, *pieces[layout.first_piece :], (MASK, 0.0)]
        return cls.from_vocab(vocab, charsmap, model_type)

    @classmethod
    def from_pretrained(cls, directory: PathLike, model_type: str | None = None) -> SentencePieceTokenizer:
        """From a directory (local or `gs://`) of `save` or HF `save_pretrained`: `tokenizer.json` if present, else
        `sentencepiece.bpe.model`. `model_type` (None: from tokenizer_config.json's class, else the vocabulary)
        picks the layout; `model_max_length` comes from tokenizer_config.json where it sets one. A half-written
        directory (`storage.check_whole`) is an error naming it."""
        directory = os.fspath(directory)
        storage.check_whole(directory)
        if storage.exists(storage.join(directory, "tokenizer.json")):
            vocab, charsmap = _read_tokenizer_json(storage.join(directory, "tokenizer.json"))
            tok = cls.from_vocab(vocab, charsmap, model_type or _model_type_of(directory, vocab))
        elif storage.exists(storage.join(directory, SPM_FILE)):
            tok = cls.from_spm(storage.join(directory, SPM_FILE), model_type or _model_type_of(directory, None))
        else:
            storage.check_access(directory)
            raise FileNotFoundError(f"{directory}: has neither tokenizer.json nor {SPM_FILE}")
        tok.read_max_length(directory)
        return tok

    @classmethod
    def train(
        cls, files_or_iterator: PathLike | Sequence[PathLike] | Iterable[str], vocab_size: int = 8000
    ) -> SentencePieceTokenizer:
        """Train a unigram vocabulary (XLM-R layout) on UTF-8 text files or an iterator of texts. `vocab_size`
        counts every id, `<mask>` (the last) included; a small corpus may yield fewer."""
        if vocab_size < 6:
            raise ValueError(f"vocab_size={vocab_size} is too small: 5 special tokens and one piece need 6")
        layout = LAYOUTS["xlm-roberta"]
        # Training splits words with the pipeline's own pre-tokenizer, so pieces never cross a word's `▁`.
        tok = build([*layout.leading, (MASK, 0.0)], None, layout)
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size - 1,  # leaves the last id to <mask>
            special_tokens=[piece for piece, _ in layout.leading],
            unk_token=UNK,
            show_progress=False,
        )
        try:
            train_backend(tok, files_or_iterator, trainer)
        except Exception as e:  # the Rust trainer raises a bare Exception
            if "not large enough to contain all chars" not in str(e):
                raise
            raise ValueError(
                f"vocab_size={vocab_size} cannot hold every character of the corpus (unigram keeps them all); "
                "raise vocab_size"
            ) from e
        vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
        return cls.from_vocab([*vocab, (MASK, 0.0)])

    def save(self, directory: PathLike) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, which HF
        `XLMRobertaTokenizerFast` / `CamembertTokenizerFast` / `AutoTokenizer.from_pretrained(directory)` load, into
        `directory` (local or `gs://`: `storage.local_dir`); returns the paths."""
        with storage.local_dir(os.fspath(directory)) as local:
            names = [os.path.basename(p) for p in self._save_files(Path(local))]
        return [storage.join(os.fspath(directory), n) for n in names]

    def _save_files(self, directory: Path) -> list[str]:
        with self._lock:  # without the last call's truncation and padding, which the Rust object holds
            self.backend.no_truncation()
            self.backend.no_padding()
            self.backend.save(str(directory / "tokenizer.json"))
        layout = LAYOUTS[self.model_type]
        added = _added_tokens(layout)
        tokens = dict(bos_token=BOS, eos_token=EOS, unk_token=UNK, sep_token=EOS, pad_token=PAD, cls_token=BOS)
        extra = {"additional_special_tokens": list(layout.extra_special_tokens)} if layout.extra_special_tokens else {}
        config = {
            "tokenizer_class": layout.tokenizer_class,
            "model_max_length": self.model_max_length,
            "add_prefix_space": True,
            **tokens,
            "mask_token": MASK,
            **extra,
            "added_tokens_decoder": {str(self.backend.token_to_id(t.content)): token_json(t) for t in added},
        }
        paths = [str(directory / "tokenizer.json")]
        for name, content in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", {**tokens, "mask_token": token_json(added[-1]), **extra}),
        ):
            (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            paths.append(str(directory / name))
        return paths
