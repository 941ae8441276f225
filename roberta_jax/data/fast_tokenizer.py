"""The encoding API every tokenizer kind shares, as HF's fast tokenizers have it, over a `tokenizers.Tokenizer`.

`FastTokenizer` holds the Rust tokenizer and its special ids, and encodes (single texts, pairs, pre-split
words, truncation with overflowing windows, padding), decodes and builds special-token layouts the way
`RobertaTokenizerFast`, `XLMRobertaTokenizerFast` and `CamembertTokenizerFast` do: `<s> A </s></s> B </s>`
with each vocabulary's own ids. Subclasses (`tokenizer.RobertaTokenizer`, byte-level BPE;
`sentencepiece.SentencePieceTokenizer`) build, train, load and save their kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from tokenizers import AddedToken, Encoding, Tokenizer

from roberta_jax import storage
from roberta_jax.data.text_files import check_text_file

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
MODEL_MAX_LENGTH = 512  # roberta-base's 514 position embeddings, less the padding offset of 2
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")

PathLike = str | os.PathLike


def train_backend(tok: Tokenizer, files_or_iterator, trainer) -> None:
    """Trains `tok` with `trainer` on text files (a path, or a list/tuple of paths, each checked to be
    non-empty UTF-8 first) or on an iterator of texts (pass a list of texts as `iter(texts)`)."""
    if isinstance(files_or_iterator, (str, os.PathLike)):
        files_or_iterator = [files_or_iterator]
    if not isinstance(files_or_iterator, (list, tuple)):
        tok.train_from_iterator(files_or_iterator, trainer)
        return
    for path in files_or_iterator:
        if not storage.isfile(os.fspath(path)):
            raise FileNotFoundError(f"{path}: no such file (to train on a list of texts, pass iter(texts))")
        check_text_file(path)
    with contextlib.ExitStack() as stack:  # the Rust trainer reads local files: remote ones are copied
        tok.train([stack.enter_context(storage.local_copy(os.fspath(p))) for p in files_or_iterator], trainer)


def token_json(token: AddedToken) -> dict[str, Any]:
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


class FastTokenizer:
    """A `tokenizers.Tokenizer` with HF fast tokenizers' encoding API and outputs.

    `<s>`, `<pad>`, `</s>`, `<unk>` and `<mask>` must be in the vocabulary; `extra_special_tokens` (e.g.
    CamemBERT's `<s>NOTUSED`) join `all_special_ids`, which masking never chooses or draws.
    """

    add_prefix_space: bool = True

    def __init__(
        self, tokenizer: Tokenizer, model_max_length: int = MODEL_MAX_LENGTH, extra_special_tokens: Sequence[str] = ()
    ):
        ids = {t: tokenizer.token_to_id(t) for t in (BOS, PAD, EOS, UNK, MASK, *extra_special_tokens)}
        if None in ids.values():
            raise ValueError(f"special tokens {[t for t, i in ids.items() if i is None]} are not in the vocabulary")
        self.bos_token_id = self.cls_token_id = ids[BOS]  # <s> also marks the classification position
        self.eos_token_id = self.sep_token_id = ids[EOS]  # </s> also separates the texts of a pair
        self.pad_token_id, self.unk_token_id, self.mask_token_id = ids[PAD], ids[UNK], ids[MASK]
        self.all_special_ids: list[int] = list(ids.values())
        self.model_max_length = model_max_length
        self._main = tokenizer
        # Truncation and padding are settings on the Rust object, so each call sets them and encodes under a lock.
        self._lock = threading.Lock()

    def read_max_length(self, directory) -> None:
        """`model_max_length` from `directory`'s tokenizer_config.json, where it gives a real one."""
        path = storage.join(os.fspath(directory), "tokenizer_config.json")
        if storage.isfile(path):
            length = json.loads(storage.read_text(path)).get("model_max_length", self.model_max_length)
            self.model_max_length = length if length < 2**31 else self.model_max_length  # HF writes 1e30: "unset"

    # Special tokens and vocabulary.

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (shared: copy it before changing its settings)."""
        return self._main

    @property
    def _tokenizer(self) -> Tokenizer:
        return self.backend

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)


    def _backend(self, add_prefix_space: bool | None) -> Tokenizer:
        """The Rust tokenizer to encode with; `add_prefix_space` other than the tokenizer's is an error here."""
        if add_prefix_space is not None and add_prefix_space != self.add_prefix_space:
            raise ValueError(
                f"add_prefix_space={add_prefix_space}: {type(self).__name__} always has {self.add_prefix_space}"
            )
        return self.backend

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
            try:
                encodings = tok.encode_batch(
                    inputs, is_pretokenized=is_split_into_words, add_special_tokens=add_special_tokens
                )
            finally:  # and off again: `backend` users (data pipeline, sentence splitting) encode plainly
                _set_length_rules(tok, False, None, 0, False, self.pad_token_id)
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
