"""A tokenizer as the data pipeline uses it: a picklable batch encoder, the special ids, and a fingerprint
that keys cached and prepared data.

    info = resolve_tokenizer(RobertaTokenizer.from_pretrained("roberta-base-dir"))
    info.encode(["a text", "another"])  # [[...], [...]] ids without special tokens
    info.fingerprint                    # sha256 of the serialized tokenizer
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import tokenizers

EncodeFn = Callable[[list[str]], Sequence[Sequence[int]]]


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What the pipeline needs from a tokenizer: batch encoding and the special ids.

    `encode` maps a list of texts to their token ids without special tokens; it must pickle
    (it runs in `num_proc` worker processes).
    """

    encode: EncodeFn
    bos_id: int
    eos_id: int
    pad_id: int
    fingerprint: str


def resolve_tokenizer(
    tokenizer: Any,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    fingerprint: str | None = None,
) -> TokenizerInfo:
    """Accepts a `tokenizers.Tokenizer`; an object holding one as `.backend` or `._tokenizer`
    (`roberta_jax.data.tokenizer.RobertaTokenizer`, the `tokenizers` implementations); a
    `TokenizerInfo`; or a callable `list[str] -> list[list[int]]`. Special ids come from the
    arguments, else the object's `bos_token_id`/`eos_token_id`/`pad_token_id`, else the
    backend's `<s>`/`</s>`/`<pad>`. A backend is copied with padding and truncation off, so
    settings left on it by earlier calls do not leak into pretraining data.
    """
    if isinstance(tokenizer, TokenizerInfo):
        return tokenizer
    backend = next(
        (
            b
            for b in (tokenizer, getattr(tokenizer, "backend", None), getattr(tokenizer, "_tokenizer", None))
            if isinstance(b, tokenizers.Tokenizer)
        ),
        None,
    )
    ids = {"bos": bos_id, "eos": eos_id, "pad": pad_id}
    for name, token in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>")):
        if ids[name] is None:
            ids[name] = getattr(tokenizer, f"{name}_token_id", None)
        if ids[name] is None and backend is not None:
            ids[name] = backend.token_to_id(token)
    missing = [f"{name}_id" for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"cannot tell the special ids of {type(tokenizer).__name__}; pass {', '.join(missing)}.")
    if backend is not None:
        backend = tokenizers.Tokenizer.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
        encode = _BackendEncode(backend)
        fingerprint = fingerprint or sha256(backend.to_str())
    elif callable(tokenizer):
        encode = tokenizer
        if fingerprint is None:
            from datasets.fingerprint import Hasher

            fingerprint = Hasher.hash(tokenizer)
    else:
        raise TypeError(
            f"tokenizer of type {type(tokenizer).__name__} is neither a tokenizers.Tokenizer, nor holds "
            "one as `.backend` or `._tokenizer`, nor is a callable list[str] -> list[list[int]]."
        )
    return TokenizerInfo(encode, int(ids["bos"]), int(ids["eos"]), int(ids["pad"]), fingerprint)


class _BackendEncode:
    def __init__(self, backend: tokenizers.Tokenizer):
        self.backend = backend

    def __call__(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips computing character offsets.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]


class EncodeBatch:
    """`Dataset.map` function: empty and whitespace-only texts become empty id lists."""

    def __init__(self, encode: EncodeFn):
        self.encode = encode

    def __call__(self, texts: list[str | None]) -> dict[str, list]:
        keep = [i for i, t in enumerate(texts) if t and not t.isspace()]
        out: list[Sequence[int]] = [[] for _ in texts]
        for i, ids in zip(keep, self.encode([texts[i] for i in keep]) if keep else []):
            out[i] = ids
        return {"input_ids": out}


def sha256(text: str) -> str:
    """The first 32 hex digits of the text's sha256: the fingerprints of tokenizers and cached data."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]
