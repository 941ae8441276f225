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
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import AddedToken, Encoding, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from roberta_jax.data.text_files import check_text_file

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
# Ids 0..3 in this order; <mask> is added after training so that it takes the last id.
LEADING_SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)
MODEL_MAX_LENGTH = 512  # roberta-base's 514 position embeddings, less the padding offset of 2
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")

PathLike = str | os.PathLike


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


def _token_json(token: AddedToken) -> dict[str, Any]:
    """An added token as HF's tokenizer_config.json and special_tokens_map.json spell it."""
    attrs = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {a: getattr(token, a) for a in attrs}


class BatchEncoding(dict):
    """Model inputs by name, each `[batch, length]` (`offset_mapping`: `[batch, length, 2]`), or
    without the batch axis for a single unbatched input, plus the Rust encodings behind them."""

    def __init__(self, data: dict[str, Any], encodings: list[Encoding]):
        super().__init__(data)
        self.encodings = encodings

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the word (within its sequence) each token came from; None for special and pad tokens."""
        return self.encodings[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for tokens of the first text, 1 for the pair's second, None for special and pad tokens."""
        return self.encodings[batch_index].sequence_ids


def _as_array(key: str, rows: list) -> np.ndarray:
    if key != "overflow_to_sample_mapping" and len({len(r) for r in rows}) > 1:
        raise ValueError(
            f"cannot stack {key} of lengths {sorted({len(r) for r in rows})} into an array; "
            "pass padding='longest' or padding='max_length'"
        )
    return np.asarray(rows, dtype=np.int32)


def _checked_options(truncation, padding, return_tensors) -> tuple[str | bool, str | bool]:
    """`encode_batch`'s truncation and padding with True spelled out ("longest_first", "longest");
    ValueError for a value it does not take."""
    truncation = "longest_first" if truncation is True else truncation
    padding = "longest" if padding is True else padding
    if truncation and truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation={truncation!r}; expected True, False or one of {TRUNCATION_STRATEGIES}")
    if padding and padding not in PADDING_STRATEGIES:
        raise ValueError(f"padding={padding!r}; expected True, False or one of {PADDING_STRATEGIES}")
    if return_tensors not in (None, "np"):
        raise ValueError(f"return_tensors={return_tensors!r}; expected 'np' (numpy) or None (lists)")
    return truncation, padding


def _set_length_rules(
    tok: Tokenizer, truncation: str | bool, max_length: int | None, stride: int, padding: str | bool, pad_id: int
) -> None:
    """Turns the backend's truncation and padding on (to `max_length`) or off for the next encoding."""
    if truncation:
        tok.enable_truncation(max_length, stride=stride, strategy=truncation)
    else:
        tok.no_truncation()
    if padding:
        length = max_length if padding == "max_length" else None
        tok.enable_padding(pad_id=pad_id, pad_token=PAD, length=length)
    else:
        tok.no_padding()


class RobertaTokenizer:
    """RoBERTa's byte-level BPE tokenizer with HF `RobertaTokenizerFast`'s encoding API and outputs."""

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
        self.add_prefix_space: bool = tokenizer.pre_tokenizer.add_prefix_space
        ids = {t: tokenizer.token_to_id(t) for t in (BOS, PAD, EOS, UNK, MASK)}
        if None in ids.values():
            raise ValueError(f"special tokens {[t for t, i in ids.items() if i is None]} are not in the vocabulary")
        self.bos_token_id = self.cls_token_id = ids[BOS]  # <s> also marks the classification position
        self.eos_token_id = self.sep_token_id = ids[EOS]  # </s> also separates the texts of a pair
        self.pad_token_id, self.unk_token_id, self.mask_token_id = ids[PAD], ids[UNK], ids[MASK]
        self.all_special_ids: list[int] = list(ids.values())
        self.model_max_length = model_max_length
        self._backends = {self.add_prefix_space: tokenizer}
        # Truncation and padding are settings on the Rust object, so each call sets them and encodes under a lock.
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, vocab_json: PathLike, merges_txt: PathLike, add_prefix_space: bool = False) -> RobertaTokenizer:
        """From a GPT-2/RoBERTa `vocab.json` (token -> id) and `merges.txt` (`#version` header, one merge a line)."""
        try:
            vocab, merges = BPE.read_file(str(vocab_json), str(merges_txt))
        except Exception as err:  # tokenizers' message names neither file
            raise ValueError(f"{vocab_json} / {merges_txt}: not a valid vocab.json + merges.txt ({err})") from err
        return cls(_build(vocab, merges, add_prefix_space))

    @classmethod
    def from_pretrained(cls, directory: PathLike, add_prefix_space: bool | None = None) -> RobertaTokenizer:
        """From a directory written by `save` or HF `save_pretrained`: `tokenizer.json` if present, else
        `vocab.json` + `merges.txt`; `model_max_length` from `tokenizer_config.json` where it sets one."""
        directory = Path(directory)
        if (directory / "tokenizer.json").exists():
            try:
                backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
            except Exception as err:  # tokenizers' message does not name the file
                raise ValueError(f"{directory / 'tokenizer.json'}: not a valid tokenizer.json ({err})") from err
            tok = cls(backend, add_prefix_space)
        elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
            tok = cls.from_files(directory / "vocab.json", directory / "merges.txt", bool(add_prefix_space))
        else:
            raise FileNotFoundError(f"{directory}: has neither tokenizer.json nor vocab.json + merges.txt")
        if (directory / "tokenizer_config.json").exists():
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
            length = config.get("model_max_length", tok.model_max_length)
            tok.model_max_length = length if length < 2**31 else tok.model_max_length  # HF writes 1e30 for "unset"
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
        if isinstance(files_or_iterator, (str, os.PathLike)):
            files_or_iterator = [files_or_iterator]
        tok = Tokenizer(BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # leaves the last id to <mask>
            min_frequency=min_frequency,
            special_tokens=_special_tokens()[: len(LEADING_SPECIAL_TOKENS)],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        if isinstance(files_or_iterator, (list, tuple)):
            for path in files_or_iterator:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{path}: no such file (to train on a list of texts, pass iter(texts))")
                check_text_file(path)
            tok.train([str(p) for p in files_or_iterator], trainer)
        else:
            tok.train_from_iterator(files_or_iterator, trainer)
        # Rebuild around the trained vocabulary with <mask> in it, so vocab.json alone is complete, as HF's is.
        with tempfile.TemporaryDirectory() as tmp:
            vocab, merges = BPE.read_file(*tok.model.save(tmp))
        vocab[MASK] = len(vocab)
        return cls(_build(vocab, merges, add_prefix_space=False))

    # Special tokens and vocabulary.

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (shared: copy it before changing its settings)."""
        return self._backends[self.add_prefix_space]

    _tokenizer = backend

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def _backend(self, add_prefix_space: bool | None) -> Tokenizer:
        """The Rust tokenizer for one prefix-space setting; a copy is made once for the non-default one."""
        flag = self.add_prefix_space if add_prefix_space is None else add_prefix_space
        if flag not in self._backends:
            copy = Tokenizer.from_str(self._tokenizer.to_str())
            _set_prefix_space(copy, flag)
            self._backends[flag] = copy
        return self._backends[flag]

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added ones included (HF's `len(tokenizer)`). Size embeddings by the largest id + 1
        instead where ids have gaps: the released roberta-base files have 50,262 tokens but `<mask>` = 50264."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def build_inputs_with_special_tokens(self, ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """`<s> A </s>`, or `<s> A </s></s> B </s>` for a pair."""
        if ids_b is None:
            return [self.cls_token_id, *ids_a, self.sep_token_id]
        return [self.cls_token_id, *ids_a, self.sep_token_id, self.sep_token_id, *ids_b, self.sep_token_id]

    def get_special_tokens_mask(
        self, ids_a: list[int], ids_b: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 where `build_inputs_with_special_tokens(ids_a, ids_b)` has a special token, else 0; or, with
        `already_has_special_tokens`, 1 where `ids_a` holds a special id."""
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [int(i in special) for i in ids_a]
        mask = [1, *[0] * len(ids_a), 1]
        return mask if ids_b is None else [*mask, 1, *[0] * len(ids_b), 1]

    def create_token_type_ids_from_sequences(self, ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """All zeros, one per token of `build_inputs_with_special_tokens`: RoBERTa has no segment embedding."""
        return [0] * len(self.build_inputs_with_special_tokens(ids_a, ids_b))

    # Encoding and decoding.

    def __call__(
        self,
        text: str | list[str] | list[list[str]],
        text_pair: str | list[str] | list[list[str]] | None = None,
        *,
        is_split_into_words: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text (or text pair) or a batch of them; keyword arguments as `encode_batch`. A single
        input comes back without the batch axis, except with `return_overflowing_tokens` (one row a window)."""
        batched = isinstance(text, (list, tuple)) and (
            not is_split_into_words or (len(text) > 0 and isinstance(text[0], (list, tuple)))
        )
        if batched:
            return self.encode_batch(text, text_pair, is_split_into_words=is_split_into_words, **kwargs)
        pairs = None if text_pair is None else [text_pair]
        out = self.encode_batch([text], pairs, is_split_into_words=is_split_into_words, **kwargs)
        if kwargs.get("return_overflowing_tokens"):
            return out
        return BatchEncoding({k: v[0] for k, v in out.items()}, out.encodings)

    def encode_batch(
        self,
        texts: Sequence[str] | Sequence[Sequence[str]],
        text_pairs: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | Literal["longest_first", "only_first", "only_second"] = False,
        max_length: int | None = None,
        stride: int = 0,
        padding: bool | Literal["longest", "max_length"] = False,
        is_split_into_words: bool = False,
        add_prefix_space: bool | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_overflowing_tokens: bool = False,
        return_tensors: Literal["np"] | None = None,
    ) -> BatchEncoding:
        """Encode `texts` (each a str, or a list of words with `is_split_into_words`), paired with
        `text_pairs` if given, in one parallel Rust call.

        Truncation (True = "longest_first") and padding="max_length" use `max_length`, which defaults to
        `model_max_length`; padding=True pads to the longest row. With `return_overflowing_tokens`, the tokens
        truncation drops come back as extra rows (windows overlapping by `stride` tokens: SQuAD-style QA
        contexts with `only_second`), and `overflow_to_sample_mapping` [rows] gives each row's input index.

        Returns `input_ids` and `attention_mask` [rows, length], plus `offset_mapping` [rows, length, 2]
        (character spans into the text, (0, 0) for special tokens) and `special_tokens_mask` [rows, length]
        if asked for; lists of lists, or int32 numpy arrays with return_tensors="np" (rows must then have
        equal lengths, i.e. padding). `word_ids(i)` / `sequence_ids(i)` map row i's tokens to words/texts.
        """
        truncation, padding = _checked_options(truncation, padding, return_tensors)
        if max_length is None and (truncation or padding == "max_length"):
            max_length = self.model_max_length
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs, strict=True))
        tok = self._backend(add_prefix_space)
        with self._lock:  # the Rust object holds truncation and padding: set and used by one call at a time
            _set_length_rules(tok, truncation, max_length, stride, padding, self.pad_token_id)
            encodings = tok.encode_batch(
                inputs, is_pretokenized=is_split_into_words, add_special_tokens=add_special_tokens
            )
        if return_overflowing_tokens:
            sample = [i for i, e in enumerate(encodings) for _ in range(1 + len(e.overflowing))]
            encodings = [row for e in encodings for row in (e, *e.overflowing)]
        data: dict[str, Any] = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encodings]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample
        if return_tensors == "np":
            data = {k: _as_array(k, v) for k, v in data.items()}
        return BatchEncoding(data, encodings)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of `ids` [length]; invalid UTF-8 byte sequences decode to U+FFFD."""
        return self._tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | np.ndarray, skip_special_tokens: bool = False
    ) -> list[str]:
        """Texts of `sequences` [batch, length] (rows may differ in length), decoded in parallel."""
        rows = [np.asarray(s).tolist() for s in sequences]
        return self._tokenizer.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    # Saving.

    def save_vocabulary(self, directory: PathLike, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write `[prefix-]vocab.json` and `[prefix-]merges.txt` into `directory`; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        vocab_path, merges_path = self._tokenizer.model.save(str(directory), filename_prefix)
        return vocab_path, merges_path

    def save(self, directory: PathLike) -> list[str]:
        """Write vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json,
        which HF `RobertaTokenizerFast`/`AutoTokenizer.from_pretrained(directory)` load; returns the paths."""
        directory = Path(directory)
        paths = list(self.save_vocabulary(directory))
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
                str(self._tokenizer.token_to_id(t.content)): _token_json(t) for t in _special_tokens()
            },
        }
        for name, content in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", {**tokens, "mask_token": _token_json(_special_tokens()[-1])}),
        ):
            (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            paths.append(str(directory / name))
        return paths

