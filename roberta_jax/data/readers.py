"""A corpus cut into pieces that workers read on their own, each piece streamed into documents.

    reading = Reading(format="auto", text_field="text")
    pieces = plan_pieces(["corpus/", "extra.jsonl.zst"], reading, piece_bytes=16 << 20)
    for text in piece_documents(pieces[3]): ...

The documents are those `data.sources` gives train.py for the same files and settings (its docstring has the
rules), in the same order when the pieces are read in order. What a piece is, by kind:
  - plain text and JSON lines: bytes [start, stop) of the file, cut right after a document boundary (a blank
    line, a line break or a separator line for text by `doc_split`; a line break for JSON lines), so a big
    file spreads over workers; the cuts depend only on the file's bytes;
  - compressed files (`.gz .bz2 .xz .zst`, text or JSON lines): the whole file (start 0, stop its size),
    decompressed as it is read, never whole in memory;
  - Parquet: row group `start` (stop = start + 1), read with only the text column;
  - a Hub dataset or a local dataset directory (`format="hub"`, `datasets.load_dataset(..., streaming=True)`):
    shard `start` of the dataset's shards (its data files).

Errors name the source and the file, and the line (JSON lines), the byte (UTF-8) or the row group (Parquet):
a missing or non-string text field, a corrupt compressed file or Parquet file, an empty file.
Paths are local or gs:// (`roberta_jax.storage`).
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import json
import lzma
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from roberta_jax import storage
from roberta_jax.data import text_files

_CUTS = {"blank_line": re.compile(rb"\n[ \t\r\f\v]*\n"), "line": re.compile(rb"\n")}
_SCAN = 1 << 16  # bytes read at a time while looking for a cut


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a source's files become documents: the `data.*` fields of the same names (`data.sources`)."""

    format: str = "auto"  # auto (by extension) | text | json | parquet | hub
    text_field: str = "text"  # JSON lines, Parquet and Hub datasets
    doc_split: str = "blank_line"  # text: blank_line | line | file
    doc_separator: str = ""  # text: a line between documents instead of doc_split
    hub_config: str | None = None
    hub_split: str = "train"


@dataclasses.dataclass(frozen=True)
class Piece:
    """Part [start, stop) of `path` (bytes; a row group or shard index for parquet and hub), of `kind` text,
    json, parquet or hub, at `version` (`storage.file_info`), read by `reading`'s rules."""

    path: str
    kind: str
    start: int
    stop: int
    version: int | str = ""
    reading: Reading = Reading()


def resolve(sources: str | Sequence[str], reading: Reading) -> dict[str, storage.FileInfo]:
    """The files `sources` names, in order, each with its size and version; {} for a Hub dataset (the names are
    the source). Sources of several kinds at once are an error naming them."""
    if reading.format == "hub":
        return {}
    files = {path: storage.file_info(path) for path in text_files.resolve_files(sources)}
    kinds = {text_files.file_kind(path, reading.format) for path in files}
    if len(kinds) > 1:
        raise ValueError(f"{sources!r} mix formats {sorted(kinds)}; pass one format at a time.")
    return files


def plan_pieces(sources: str | Sequence[str], reading: Reading, piece_bytes: int,
                files: Mapping[str, storage.FileInfo] | None = None) -> list[Piece]:
    """The pieces of `sources` in order (rules in the module docstring); `files`: `resolve`'s answer, when the
    caller has it. An empty file is an error naming it."""
    if reading.format == "hub":
        return _hub_pieces(sources, reading)
    pieces: list[Piece] = []
    for path, info in (resolve(sources, reading) if files is None else files).items():
        kind = text_files.file_kind(path, reading.format)
        if info.size == 0:
            raise ValueError(f"{path}: file is empty.")
        if kind == "parquet":
            with _parquet_file(path) as parquet:
                groups = parquet.num_row_groups
            if not groups:
                raise ValueError(f"{path}: Parquet file holds no rows.")
            pieces += [Piece(path, kind, g, g + 1, info.version, reading) for g in range(groups)]
            continue
        cuts = [] if text_files.compression(path) else _cuts(path, info.size, _boundary(kind, reading), piece_bytes)
        bounds = [0, *cuts, info.size]
        pieces += [Piece(path, kind, a, b, info.version, reading) for a, b in zip(bounds, bounds[1:])]
    return pieces


def piece_documents(piece: Piece) -> Iterator[str]:
    """The document texts of `piece`, in order; empty ones included where `data.sources` counts them (a blank
    line in "line" mode, an empty JSON or Parquet text)."""
    readers = {"text": _text_documents, "json": _json_documents, "parquet": _parquet_documents,
               "hub": _hub_documents}
    return readers[piece.kind](piece)


def _boundary(kind: str, reading: Reading) -> re.Pattern | None:
    """The pattern a cut follows: a document boundary of the text rules, a line break of JSON lines; None for a
    file that is one document."""
    if kind == "json":
        return _CUTS["line"]
    if reading.doc_separator:
        sep = re.escape(reading.doc_separator.encode("utf-8"))
        return re.compile(rb"\n[ \t\r\f\v]*" + sep + rb"[ \t\r\f\v]*\n")
    return None if reading.doc_split == "file" else _CUTS[reading.doc_split]


def _cuts(path: str, size: int, pattern: re.Pattern | None, piece_bytes: int) -> list[int]:
    """Offsets, ascending and inside (0, size), just after a match of `pattern` near each multiple of
    piece_bytes."""
    if pattern is None or size <= piece_bytes:
        return []
    cuts = []
    with storage.open_file(path, "rb") as f:
        target = piece_bytes
        while target < size:
            f.seek(target)
            cut, window, base = None, b"", target
            while cut is None and (block := f.read(_SCAN)):
                window += block
                found = pattern.search(window)
                cut = base + found.end() if found else None
                if cut is None:  # keep a short overlap: a boundary may straddle two blocks
                    keep = window[-64:]
                    base, window = base + len(window) - len(keep), keep
            if cut is None or cut >= size:
                break
            cuts.append(cut)
            target = cut + piece_bytes
    return cuts


def _decompressed(piece: Piece, raw) -> io.BufferedIOBase:
    """The decompressed byte stream of the compressed file open as `raw`."""
    suffix = text_files.compression(piece.path)
    if suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix](raw, "rb")


def _byte_range(piece: Piece) -> bytes:
    """The bytes of an uncompressed piece (at most about `piece_bytes`)."""
    with storage.open_file(piece.path, "rb") as f:
        f.seek(piece.start)
        return f.read(piece.stop - piece.start)


def _utf8(data: bytes, piece: Piece) -> str:
    """`data` (the bytes of `piece` from its start) decoded, line breaks read as "\\n" (universal newlines)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{piece.path}: not valid UTF-8 ({e.reason} at byte {piece.start + e.start}); "
                         "re-encode it, e.g. `iconv -f latin1 -t utf-8`.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _stream_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged compressed file raises, by library: gzip, zlib, bz2 (OSError), xz, zstandard."""
    import zstandard

    return (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def _text_documents(piece: Piece) -> Iterator[str]:
    r = piece.reading
    if not text_files.compression(piece.path):
        yield from text_files.split_text(_utf8(_byte_range(piece), piece), r.doc_split, r.doc_separator)
        return
    with storage.open_file(piece.path, "rb") as raw, _decompressed(piece, raw) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8")  # universal newlines, as `text_documents`
        try:
            for batch in text_files.stream_documents(text, r.doc_split, r.doc_separator):
                yield from batch
        except UnicodeDecodeError as e:
            raise ValueError(f"{piece.path}: not valid UTF-8 once decompressed ({e.reason}).") from None
        except _stream_errors() as e:
            raise _unreadable(piece, e) from None


def _json_lines(piece: Piece) -> Iterator[tuple[int, bytes]]:
    """(line number in the piece, from 1; the line's bytes) of a JSON-lines piece."""
    if not text_files.compression(piece.path):
        yield from enumerate(_byte_range(piece).split(b"\n"), start=1)
        return
    with storage.open_file(piece.path, "rb") as raw, _decompressed(piece, raw) as stream:
        try:
            yield from enumerate(io.BufferedReader(stream), start=1)
        except _stream_errors() as e:
            raise _unreadable(piece, e) from None


def _json_documents(piece: Piece) -> Iterator[str]:
    """One document per record: its `text_field`; blank lines are no records (as `datasets`' JSON reader)."""
    field = piece.reading.text_field
    for number, line in _json_lines(piece):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise _json_error(piece, number, f"not valid JSON ({e})") from None
        if not isinstance(record, dict) or field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise _json_error(piece, number, f"no field {field!r} (the record's fields: {fields}); set text_field")
        if not isinstance(record[field], str):
            raise _json_error(piece, number, f"field {field!r} is {type(record[field]).__name__}, not a string")
        yield record[field]


def _json_error(piece: Piece, number: int, problem: str) -> ValueError:
    """The error naming the file and line `number` of `piece` (counting the lines before the piece: only on
    this error path, so reading never counts)."""
    before = 0
    if piece.start:
        with storage.open_file(piece.path, "rb") as f:
            remaining = piece.start
            while remaining and (block := f.read(min(remaining, 1 << 22))):
                before, remaining = before + block.count(b"\n"), remaining - len(block)
    return ValueError(f"{piece.path}, line {before + number}: {problem}")


@contextlib.contextmanager
def _parquet_file(path: str) -> Iterator[Any]:
    """A `pyarrow.parquet.ParquetFile` of `path`, open while in the block; a file that is not Parquet is an error
    naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage.open_file(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: not a readable Parquet file ({_one_line(e)}).") from None
        yield parquet


def _parquet_documents(piece: Piece) -> Iterator[str]:
    """The `text_field` column of one row group (nulls and non-strings are errors naming it)."""
    import pyarrow as pa

    field, where = piece.reading.text_field, f"{piece.path}, row group {piece.start}"
    with _parquet_file(piece.path) as parquet:
        if field not in parquet.schema_arrow.names:
            raise ValueError(f"{piece.path}: no field {field!r} (its fields: {parquet.schema_arrow.names}); "
                             "set text_field.")
        try:
            column = parquet.read_row_group(piece.start, columns=[field]).column(0)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{where}: not readable ({_one_line(e)}).") from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"{where}: field {field!r} is {column.type}, not a string.")
    if column.null_count:
        raise ValueError(f"{where}: field {field!r} is null in {column.null_count} rows.")
    for chunk in column.chunks:
        yield from chunk.to_pylist()


def _hub_dataset(name: str, reading: Reading):
    import datasets

    return datasets.load_dataset(name, reading.hub_config, split=reading.hub_split, streaming=True)


def _hub_pieces(sources: str | Sequence[str], reading: Reading) -> list[Piece]:
    """One piece per shard (data file) of the Hub dataset or local dataset directory `sources` names."""
    names = [sources] if isinstance(sources, str) else list(sources)
    if len(names) != 1:
        raise ValueError(f"format='hub' reads one dataset name; got {names!r}.")
    shards = _hub_dataset(names[0], reading).n_shards
    return [Piece(names[0], "hub", i, i + 1, "", reading) for i in range(shards)]


def _hub_documents(piece: Piece) -> Iterator[str]:
    r = piece.reading
    dataset = _hub_dataset(piece.path, r)
    shard = dataset.shard(num_shards=dataset.n_shards, index=piece.start, contiguous=True)
    where = f"{piece.path} (config {r.hub_config}, split {r.hub_split}), shard {piece.start}"
    for number, row in enumerate(shard):
        text = row.get(r.text_field, _MISSING)
        if text is _MISSING:
            raise ValueError(f"{where}: no field {r.text_field!r} (its fields: {sorted(row)}); set text_field.")
        if not isinstance(text, str):
            raise ValueError(f"{where}, row {number}: field {r.text_field!r} is {type(text).__name__}, not a string.")
        yield text


_MISSING: Any = object()


def _unreadable(piece: Piece, error: Exception) -> ValueError:
    return ValueError(f"{piece.path}: not a readable {text_files.compression(piece.path)} file ({_one_line(error)}).")


def _one_line(error: Exception) -> str:
    """A library's message on one line (pyarrow's span several)."""
    return " ".join(str(error).split())
