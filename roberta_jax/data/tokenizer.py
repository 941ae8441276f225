"""RoBERTa's byte-level BPE tokenizer on the Rust `tokenizers` library, interchangeable with HF's.

Load the released vocabulary, or train a new one, and save it where
`transformers.AutoTokenizer.from_pretrained(dir)` reads it and encodes identically:

    tok = RobertaTokenizer.from_files("vocab.json", "merges.txt")
    batch = tok(["Hello world", "The capital of France is <mask>."], padding=True, return_tensors="np")
    batch["input_ids"]  # int32 [batch, length]

    python -m roberta_jax.tools.tokenizer train --files a.txt b.txt --vocab-size 50265 --min-frequency 2 --out DIR

Ids follow fairseq/HF roberta: `<s>`=0 (bos, cls), `<pad>`=1, `</s>`=2 (eos, sep), `<unk>`=3 and `<mask>` last.
All batch encoding runs in the Rust `encode_batch`, which is parallel over the batch (RAYON_NUM_THREADS).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from roberta_jax import storage
from roberta_jax.data.fast_tokenizer import (
    BOS,
    EOS,
    MASK,
    MODEL_MAX_LENGTH,
    PAD,
    UNK,
    BatchEncoding,
    FastTokenizer,
    PathLike,
    token_json,
    train_backend,
)
from roberta_jax.data.sentencepiece import SPM_FILE, SentencePieceTokenizer
from roberta_jax.suggest import did_you_mean

__all__ = ["BatchEncoding", "RobertaTokenizer", "SentencePieceTokenizer", "load_tokenizer", "train_tokenizer"]

# Ids 0..3 in this order; <mask> is added after training so that it takes the last id.
LEADING_SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)


def _special_tokens() -> list[AddedToken]:
    # lstrip: the space before <mask> belongs to the mask, so "is <mask>." predicts " Paris" as one token.
    return [AddedToken(t, special=True, normalized=False) for t in LEADING_SPECIAL_TOKENS] + [
        AddedToken(MASK, lstrip=True, special=True, normalized=False)
    ]


def _set_prefix_space(tok: Tokenizer, add_prefix_space: bool) -> None:
    """Point `tok`'s pre-tokenizer and `<s> A </s></s> B </s>` post-processor at one prefix-space setting."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.post_processor = processors.RobertaProcessing(
        (EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)), trim_offsets=True, add_prefix_space=add_prefix_space
    )


def _build(vocab: dict[str, int], merges: list[tuple[str, str]], add_prefix_space: bool) -> Tokenizer:
    """The RoBERTa pipeline around a BPE model, configured exactly as HF's `RobertaTokenizer` builds it."""
    tok = Tokenizer(BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_special_tokens())
    _set_prefix_space(tok, add_prefix_space)
    return tok


class RobertaTokenizer(FastTokenizer):
    """RoBERTa's byte-level BPE tokenizer with HF `RobertaTokenizerFast`'s encoding API and outputs."""

    kind = "byte_level_bpe"
    model_type = "roberta"  # of a model trained on it

    def __init__(
        self, tokenizer: Tokenizer, add_prefix_space: bool | None = None, model_max_length: int = MODEL_MAX_LENGTH
    ):
        """Wrap a `tokenizers.Tokenizer` with a ByteLevel pre-tokenizer. `add_prefix_space` (None: as the
        tokenizer has it; else set on it) encodes "Hello" like " Hello", as `is_split_into_words` words need."""
        if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel):
            raise ValueError(
                f"expected a ByteLevel pre-tokenizer, got {tokenizer.pre_tokenizer!r}; this is not a RoBERTa tokenizer"
            )
        if add_prefix_space is not None and add_prefix_space != tokenizer.pre_tokenizer.add_prefix_space:
            _set_prefix_space(tokenizer, add_prefix_space)
        super().__init__(tokenizer, model_max_length)
        self.add_prefix_space = tokenizer.pre_tokenizer.add_prefix_space
        self._backends = {self.add_prefix_space: tokenizer}

    @classmethod
    def from_files(cls, vocab_json: PathLike, merges_txt: PathLike, add_prefix_space: bool = False) -> RobertaTokenizer:
        """From a GPT-2/RoBERTa `vocab.json` (token -> id) and `merges.txt` (`#version` header, one merge a line),
        local or on `gs://`."""
        try:
            with storage.local_copy(os.fspath(vocab_json)) as vocab_path, \
                    storage.local_copy(os.fspath(merges_txt)) as merges_path:
                vocab, merges = BPE.read_file(vocab_path, merges_path)
        except Exception as err:  # tokenizers' message names neither file
            raise ValueError(f"{vocab_json} / {merges_txt}: not a valid vocab.json + merges.txt ({err})") from err
        return cls(_build(vocab, merges, add_prefix_space))

    @classmethod
    def from_pretrained(cls, directory: PathLike, add_prefix_space: bool | None = None) -> RobertaTokenizer:
        """From a directory (local or `gs://`) written by `save` or HF `save_pretrained`: `tokenizer.json` if
        present, else `vocab.json` + `merges.txt`; `model_max_length` from `tokenizer_config.json` where it sets
        one. A half-written directory (`storage.check_whole`) is an error naming it."""
        directory = os.fspath(directory)
        storage.check_whole(directory)
        tokenizer_json, vocab, merges = (storage.join(directory, n) for n in ("tokenizer.json", "vocab.json",
                                                                              "merges.txt"))
        if storage.exists(tokenizer_json):
            try:
                backend = Tokenizer.from_str(storage.read_text(tokenizer_json))
            except Exception as err:  # tokenizers' message does not name the file
                raise ValueError(f"{tokenizer_json}: not a valid tokenizer.json ({err})") from err
            tok = cls(backend, add_prefix_space)
        elif storage.exists(vocab) and storage.exists(merges):
            tok = cls.from_files(vocab, merges, bool(add_prefix_space))
        else:
            storage.check_access(directory)
            raise FileNotFoundError(f"{directory}: has neither tokenizer.json nor vocab.json + merges.txt")
        tok.read_max_length(directory)
        return tok

    @classmethod
    def train(
        cls,
        files_or_iterator: PathLike | Sequence[PathLike] | Iterable[str],
        vocab_size: int = 50265,
        min_frequency: int = 2,
    ) -> RobertaTokenizer:
        """Train byte-level BPE on text files (a path, or a list/tuple of paths) or an iterator of texts
        (pass a list of texts as `iter(texts)`). `vocab_size` counts every id, `<mask>` (the last) included;
        a small corpus may yield fewer. Files must be non-empty UTF-8 and are checked before training."""
        if vocab_size < len(LEADING_SPECIAL_TOKENS) + 256 + 1:
            raise ValueError(f"vocab_size={vocab_size} is too small: 4 special tokens, 256 bytes and <mask> need 261")
        tok = Tokenizer(BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # leaves the last id to <mask>
            min_frequency=min_frequency,
            special_tokens=_special_tokens()[: len(LEADING_SPECIAL_TOKENS)],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        train_backend(tok, files_or_iterator, trainer)
        # Rebuild around the trained vocabulary with <mask> in it, so vocab.json alone is complete, as HF's is.
        with tempfile.TemporaryDirectory() as tmp:
            vocab, merges = BPE.read_file(*tok.model.save(tmp))
        vocab[MASK] = len(vocab)
        return cls(_build(vocab, merges, add_prefix_space=False))

    # Special tokens and vocabulary.
    def _backend(self, add_prefix_space: bool | None) -> Tokenizer:
        """The Rust tokenizer for one prefix-space setting; a copy is made once for the non-default one."""
        flag = self.add_prefix_space if add_prefix_space is None else add_prefix_space
        if flag not in self._backends:
            copy = Tokenizer.from_str(self._tokenizer.to_str())
            _set_prefix_space(copy, flag)
            self._backends[flag] = copy
        return self._backends[flag]

    # Saving.

    def save_vocabulary(self, directory: PathLike, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write `[prefix-]vocab.json` and `[prefix-]merges.txt` into `directory` (local or `gs://`); returns their
        paths."""
        with storage.local_dir(os.fspath(directory)) as local:
            names = [os.path.basename(p) for p in self._tokenizer.model.save(local, filename_prefix)]
        vocab_path, merges_path = (storage.join(os.fspath(directory), n) for n in names)
        return vocab_path, merges_path

    def save(self, directory: PathLike) -> list[str]:
        """Write vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json,
        which HF `RobertaTokenizerFast`/`AutoTokenizer.from_pretrained(directory)` load, into `directory` (local
        or `gs://`: `storage.local_dir`); returns the paths."""
        with storage.local_dir(os.fspath(directory)) as local:
            names = [os.path.basename(p) for p in self._save_files(Path(local))]
        return [storage.join(os.fspath(directory), n) for n in names]

    def _save_files(self, directory: Path) -> list[str]:
        paths = list(self._tokenizer.model.save(str(directory)))
        with self._lock:  # without the last call's truncation and padding, which the Rust object holds
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
            self._tokenizer.save(str(directory / "tokenizer.json"))
        paths.append(str(directory / "tokenizer.json"))
        tokens = dict(bos_token=BOS, eos_token=EOS, unk_token=UNK, sep_token=EOS, pad_token=PAD, cls_token=BOS)
        config = {
            "tokenizer_class": "RobertaTokenizer",
            "model_max_length": self.model_max_length,
            "add_prefix_space": self.add_prefix_space,
            "trim_offsets": True,
            "errors": "replace",
            **tokens,
            "mask_token": MASK,
            "added_tokens_decoder": {
                str(self._tokenizer.token_to_id(t.content)): token_json(t) for t in _special_tokens()
            },
        }
        for name, content in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", {**tokens, "mask_token": token_json(_special_tokens()[-1])}),
        ):
            (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            paths.append(str(directory / name))
        return paths



# Every kind of tokenizer, by name: the config's `tokenizer.kind` and the tokenizer CLI's `--kind`.
KINDS = ("byte_level_bpe", "unigram")


def is_tokenizer_dir(path: PathLike) -> bool:
    """Whether `path` (local or `gs://`) holds a tokenizer `load_tokenizer` reads."""
    names = ("tokenizer.json", "vocab.json", SPM_FILE)
    return any(storage.isfile(storage.join(os.fspath(path), name)) for name in names)


def load_tokenizer(directory: PathLike) -> FastTokenizer:
    """The tokenizer of an HF-format directory (local or `gs://`), of the kind its files say: a SentencePiece model
    or a Unigram tokenizer.json is a `SentencePieceTokenizer` (XLM-R, CamemBERT), byte-level BPE a
    `RobertaTokenizer`. A half-written directory (`storage.check_whole`) is an error naming it."""
    directory = os.fspath(directory)
    storage.check_whole(directory)
    tokenizer_json = storage.join(directory, "tokenizer.json")
    if storage.isfile(tokenizer_json):
        model_kind = json.loads(storage.read_text(tokenizer_json)).get("model", {}).get("type")
        unigram = model_kind == "Unigram"
    else:
        unigram = storage.isfile(storage.join(directory, SPM_FILE))
    return (SentencePieceTokenizer if unigram else RobertaTokenizer).from_pretrained(directory)


def train_tokenizer(files: Sequence[PathLike], kind: str, vocab_size: int, min_frequency: int = 2) -> FastTokenizer:
    """A tokenizer of `kind` trained on text files: byte-level BPE (RoBERTa; pairs seen `min_frequency` times
    merge) or a unigram vocabulary (XLM-R layout)."""
    if kind == "byte_level_bpe":
        return RobertaTokenizer.train(files, vocab_size=vocab_size, min_frequency=min_frequency)
    if kind == "unigram":
        return SentencePieceTokenizer.train(files, vocab_size=vocab_size)
    raise ValueError(f"tokenizer kind {kind!r}{did_you_mean(kind, KINDS)}; choose from {list(KINDS)}")
