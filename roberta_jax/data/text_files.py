"""Input files, local or on `gs://` (`roberta_jax.storage`): expanding sources into files, the checks that
name a bad file by its path, and splitting plain-text files into documents.

Both the tokenizer trainer and the pretraining corpus reader call the checks before handing files to
a library (`tokenizers`, `datasets`) whose own errors would not say which file was at fault. Remote files
are streamed: read in chunks as local ones are, never copied whole.
"""

from __future__ import annotations

import codecs
import io
import os
import re
from collections.abc import Iterator, Sequence

from roberta_jax import storage

_CHUNK = 1 << 22  # bytes (UTF-8 check) or characters (document splitting) read at a time
# One or more blank lines (the newline ending the previous line included).
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_EDGE_BLANK_LINES = re.compile(r"^(?:[^\S\n]*\n)+|(?:\n[^\S\n]*)+$")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # read streaming by `data.readers`


def resolve_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands files, directories (every non-hidden file under them, sorted) and globs, in order, each local
    or on `gs://`; paths are kept as given. A source that names nothing is an error naming it (or its bucket,
    when that is missing or unreachable)."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files = []
    for source in map(os.fspath, sources):
        if storage.isfile(source):
            files.append(source)
        elif storage.isdir(source):
            found = storage.find(source)
            if not found:
                raise FileNotFoundError(f"{source}: directory holds no files.")
            files.extend(found)
        else:
            matches = storage.glob_files(source)
            if not matches:
                storage.resolve(source)  # `gs:/bkt` (one slash) or another scheme: that is the error
                storage.check_access(source)
                raise FileNotFoundError(
                    f"{source}: no such file, directory or glob match "
                    "(for a Hugging Face Hub dataset pass format='hub')."
                )
            files.extend(matches)
    return files


def check_text_file(path: str | os.PathLike) -> None:
    """Raises ValueError naming `path` if it is empty, holds only whitespace or is not UTF-8.

    Streams the file, so any size is fine; the byte offset of a bad sequence is in the message.
    """
    if storage.size(path) == 0:
        raise ValueError(f"{path}: file is empty.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with storage.open_file(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            pending = len(decoder.getstate()[0])  # bytes of a character split across two chunks
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}: not valid UTF-8 ({e.reason} at byte {offset - pending + e.start}); "
                    "re-encode it, e.g. `iconv -f latin1 -t utf-8`."
                ) from None
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
    if decoder.getstate()[0]:
        raise ValueError(f"{path}: not valid UTF-8 (truncated character at the end of the file).")
    if not has_text:
        raise ValueError(f"{path}: empty, the file holds only whitespace.")


def check_file(path: str, kind: str) -> None:
    """Raises ValueError naming `path` if it is empty or (text and JSON) whitespace-only or not UTF-8."""
    if kind != "parquet":
        check_text_file(path)
    elif storage.size(path) == 0:
        raise ValueError(f"{path}: file is empty.")


def compression(path: str) -> str:
    """The compression suffix of `path` (one of `COMPRESSIONS`), or "" for a plain file."""
    return next((suffix for suffix in COMPRESSIONS if path.lower().endswith(suffix)), "")


def file_kind(path: str, format: str = "auto") -> str:
    """The file's kind, "text", "json" or "parquet": `format` itself unless "auto", else by extension (that of
    the decompressed file for `.gz`, `.bz2`, `.xz` and `.zst`)."""
    if format != "auto":
        return format
    name = path.lower().removesuffix(compression(path))
    if name.endswith((".jsonl", ".json")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def text_documents(files: Sequence[str], doc_split: str, separator: str = "") -> Iterator[list[str]]:
    """Batches of the document texts of plain-text files, in file order, split by `doc_split`
    ("blank_line", "line" or "file"), or, when `separator` is set, at each line that is `separator`
    (whitespace around it aside); the rules are in `data.sources`' docstring."""
    for path in files:
        with storage.open_file(path, "r", encoding="utf-8") as f:  # universal newlines: \r\n and \r read as \n
            yield from stream_documents(f, doc_split, separator)


def stream_documents(f: io.TextIOBase, doc_split: str, separator: str = "") -> Iterator[list[str]]:
    """Batches of the document texts of one open text file (universal newlines), by `text_documents`' rules,
    reading `_CHUNK` characters at a time (a "file" document is read whole)."""
    if separator:
        yield from _separated(f, separator)
        return
    if doc_split == "file":
        yield _nonblank([f.read()])
        return
    if doc_split == "line":
        carry = ""
        while chunk := f.read(_CHUNK):
            lines = (carry + chunk + f.readline()).split("\n")  # ends on a line break ...
            carry = lines.pop()  # ... so this is "" unless the file lacks a final one
            yield lines
        if carry:
            yield [carry]
        return
    # blank_line: search each chunk only once; `pending` holds the open document.
    pending: list[str] = []
    while chunk := f.read(_CHUNK):
        # The leading "\n" stands for the line break that ended the previous chunk.
        parts = _BLANK_LINES.split("\n" + chunk + f.readline())
        pending.append(parts[0][1:])
        if len(parts) > 1:
            yield _nonblank(["".join(pending), *parts[1:-1]])
            pending = [parts[-1]]
    yield _nonblank(["".join(pending)])


def split_text(text: str, doc_split: str, separator: str = "") -> list[str]:
    """The documents of a whole text whose line breaks are already "\\n", by `text_documents`' rules
    (a piece of a file cut right after a line break, after a blank line for "blank_line", or after a
    `separator` line)."""
    if separator:
        return [doc for batch in _separated(io.StringIO(text), separator) for doc in batch]
    if doc_split == "file":
        return _nonblank([text])
    if doc_split == "line":
        lines = text.split("\n")
        return lines[:-1] if lines[-1] == "" else lines
    return _nonblank(_BLANK_LINES.split(text))


def _separated(lines: Iterator[str], separator: str, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of the texts between the lines that are `separator` (TinyStories' `<|endoftext|>`)."""
    batch, document = [], []
    for line in lines:
        if line.strip() != separator:
            document.append(line)
            continue
        batch.append("".join(document))
        document = []
        if len(batch) == batch_size:
            yield _nonblank(batch)
            batch = []
    yield _nonblank([*batch, "".join(document)])


def _nonblank(parts: list[str]) -> list[str]:
    """The parts without leading and trailing blank lines; blank parts dropped."""
    return [text for text in (_EDGE_BLANK_LINES.sub("", part) for part in parts) if text]
