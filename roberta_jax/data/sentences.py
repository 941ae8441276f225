"""The pair formats' sentence splitter (`split_sentences`) and where its sentences fall in token ids.

The splitter, named `terminal_punctuation_or_line_break`, reads UTF-8 text and puts a sentence boundary:

1. after `.`, `!` or `?`, optionally followed by closing quotes or brackets (`" ' ) ] }` and `” ’ »`),
   when whitespace follows: the boundary is after that whitespace run;
2. after every line break (`\\n` or `\\r`): the boundary is after the whitespace run holding it.

Whitespace is ASCII's (space, tab, line breaks, form feed, vertical tab). A sentence therefore ends with the
whitespace that follows it and the next one starts at a non-whitespace character; the sentences joined
give the text back. No sentence is empty: a boundary is dropped when no non-whitespace character comes
before it (leading whitespace stays with the first sentence) and there is none at the end of the text,
so every sentence holds at least one non-whitespace character. "Mr. Smith" is split after "Mr."
(the rules know no abbreviations); "3.14" and "e.g.," are not split (no whitespace after the dot).

On token ids (`document_sentences`) the splitter reads the text the pieces spell (`piece_bytes`) and a
sentence starts at the piece holding its first byte. Byte-level BPE carries a word's leading space in
the word's piece (`Ġthe`), so "Hello. World" becomes `Hello .` | `ĠWorld`; a line break piece (`Ċ`)
stays with the sentence it ends. A tokenizer whose normalizer drops line breaks sees only rule 1.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import numpy as np
import tokenizers

NAME = "terminal_punctuation_or_line_break"
_CLOSERS = rb"""(?:["')\]}]|\xe2\x80\x9d|\xe2\x80\x99|\xc2\xbb)"""  # " ' ) ] } and UTF-8 ” ’ »
_AFTER_TERMINATOR = re.compile(rb"[.!?]" + _CLOSERS + rb"*\s+")
_AFTER_LINE_BREAK = re.compile(rb"[\r\n]\s*")
_NON_SPACE = re.compile(rb"\S")


def sentence_starts(text: bytes) -> np.ndarray:
    """int64 [num_sentences - 1]: the byte offsets in UTF-8 `text` where the second, third, ...
    sentence starts (the rules of the module docstring), ascending."""
    first = _NON_SPACE.search(text)
    if first is None:
        return np.zeros(0, np.int64)
    ends = {m.end() for pattern in (_AFTER_TERMINATOR, _AFTER_LINE_BREAK) for m in pattern.finditer(text)}
    return np.array(sorted(e for e in ends if first.start() < e < len(text)), np.int64)


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` by the module docstring's rules; `"".join` of them is `text`.
    Empty or whitespace-only text has no sentences."""
    data = text.encode("utf-8")
    if _NON_SPACE.search(data) is None:
        return []
    cuts = [0, *sentence_starts(data).tolist(), len(data)]
    return [data[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]


def piece_bytes(tokenizer: Any) -> list[bytes]:
    """The UTF-8 bytes each id spells, by id: byte-level BPE pieces through GPT-2's byte-to-character map;
    other pieces (SentencePiece's) with "▁" as a space and `<0xNN>` byte pieces as their byte.

    `tokenizer`: a `tokenizers.Tokenizer` or an object holding one as `.backend` or `._tokenizer`.
    """
    backend = next((b for b in (tokenizer, getattr(tokenizer, "backend", None), getattr(tokenizer, "_tokenizer", None))
                    if isinstance(b, tokenizers.Tokenizer)), None)
    if backend is None:
        raise TypeError(f"the pair input formats find sentences in the text of the tokenizer's pieces; "
                        f"{type(tokenizer).__name__} holds no `tokenizers.Tokenizer` to read them from.")
    vocab = backend.get_vocab(with_added_tokens=True)
    byte_level = (json.loads(backend.to_str()).get("decoder") or {}).get("type") == "ByteLevel"
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    table = [b""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        if byte_level and all(c in to_byte for c in piece):
            table[i] = bytes(to_byte[c] for c in piece)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            table[i] = bytes([int(piece[3:5], 16)])
        else:
            table[i] = piece.replace("\u2581", " ").encode("utf-8")
    return table


class Sentences(NamedTuple):
    """Sentences as token ranges: sentence k is tokens[starts[k]:ends[k]] (int64 [num_sentences] each); the
    sentences of the i-th document are those of doc_offsets[i]:doc_offsets[i + 1] (int64 [num_documents + 1])."""

    starts: np.ndarray
    ends: np.ndarray
    doc_offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts


def document_sentences(
    tokens: np.ndarray, doc_offsets: np.ndarray, pieces: list[bytes], doc_indices: np.ndarray | None = None,
) -> Sentences:
    """The sentences of the documents `doc_indices` (all if None), in order.

    Args: tokens int [num_tokens] and doc_offsets int [num_documents + 1] (`sources.TokenizedCorpus`);
      pieces: `piece_bytes` of the tokenizer.
    Returns: `Sentences` whose documents are `doc_indices`' in order. Every sentence holds at least one token
      and a document's sentences tile it; an empty document has none.
    """
    doc_offsets = np.asarray(doc_offsets, np.int64)
    docs = np.arange(len(doc_offsets) - 1) if doc_indices is None else np.asarray(doc_indices, np.int64)
    lengths = np.array([len(p) for p in pieces], np.int64)
    flat = np.frombuffer(b"".join(pieces), np.uint8)
    piece_start = np.cumsum(lengths) - lengths
    starts, ends, counts = [], [], [0]
    for d in docs.tolist():
        begin, end = int(doc_offsets[d]), int(doc_offsets[d + 1])
        ids = np.asarray(tokens[begin:end], np.int64)
        byte_lengths = lengths[ids]
        token_byte = np.cumsum(byte_lengths) - byte_lengths  # where each token's bytes start in the document
        gather = np.repeat(piece_start[ids] - token_byte, byte_lengths) + np.arange(byte_lengths.sum())
        cuts = np.searchsorted(token_byte, sentence_starts(flat[gather].tobytes()), side="right") - 1
        # A sentence starts at the piece holding its first byte; two starts in one piece are one.
        cuts = np.unique(np.concatenate([[0], cuts])) if len(ids) else np.zeros(0, np.int64)
        starts.append(begin + cuts)
        ends.append(np.append(begin + cuts[1:], end) if len(ids) else cuts)
        counts.append(len(cuts))
    empty = np.zeros(0, np.int64)
    return Sentences(np.concatenate([empty, *starts]), np.concatenate([empty, *ends]),
                     np.cumsum(counts, dtype=np.int64))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level BPE pieces (`Ġ` is the space, `Ċ` the line break)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
