"""Tokenize and pack a corpus once, in parallel on Dask, into the shards of `shards` (format there).

    manifest = prepare(["corpus/"], tokenizer, "gs://bucket/prepared", max_seq_length=512, num_workers=16)

Pieces. Every text file is cut into pieces of about `piece_bytes` bytes (16 MiB by default), each cut right
after a document boundary: after a blank line for `doc_split="blank_line"`, after a line break for "line",
after a `doc_separator` line when one is set (the documents are those training reads: `text_files`);
a "file" document is never cut, nor is a file smaller than `piece_bytes`. The cuts depend only on the
bytes of the files, so the documents of a piece, and piece i's shard, are the same whatever the number of
workers or machines. Piece i of a split becomes `shard-{i:05d}` of that split, in file order.

A shard's end. Each piece's documents are packed FULL-SENTENCES (`packing`) on their own; the stream's
tail is kept as a last row padded with `<pad>` (its real length is in the manifest, the attention mask
hides the rest). So no token is lost or duplicated; per shard at most one row is short, and the manifest
counts the padding (`train/padding`, in tokens). Rows never span two shards.

Engine. Dask: `num_workers` processes of a `distributed.LocalCluster` on this machine, or any Dask
cluster (`scheduler="tcp://host:8786"`, e.g. from dask-jobqueue on SLURM or dask-kubernetes) whose workers
can read the corpus and write `out` (a shared filesystem or a bucket). Each task reads its piece itself;
the client only plans the cuts (a few kilobytes read per cut) and writes the manifest.

Restarts. A shard is complete once its `.json` exists (written after the `.npy`); a rerun with the same
settings skips complete shards, redoes the rest and writes the manifest, giving byte-identical output.
A source file is known by its path, size and version (`storage.file_info`: the modification time locally, the
object generation on gs://), in each shard's record and in the manifest: a file edited in place, even to the
same size, makes its shards be redone, and a rerun into a finished directory refuses naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from roberta_jax import storage
from roberta_jax.data import shards, text_files
from roberta_jax.data.encoders import EncodeBatch, TokenizerInfo, resolve_tokenizer
from roberta_jax.data.packing import pack_documents

log = logging.getLogger(__name__)

PIECE_BYTES = 16 << 20
_CUTS = {"blank_line": re.compile(rb"\n[ \t\r\f\v]*\n"), "line": re.compile(rb"\n")}
_SCAN = 1 << 16  # bytes read at a time while looking for a cut
_ENCODE_BATCH = 1000  # documents per tokenizer call


@dataclasses.dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of `path` at `version` (`storage.file_info`): shard `index` of `split`."""

    split: str
    index: int
    path: str
    start: int
    end: int
    doc_split: str
    doc_separator: str = ""
    version: int | str = ""


def plan_pieces(files: Mapping[str, storage.FileInfo], split: str, doc_split: str, piece_bytes: int = PIECE_BYTES,
                doc_separator: str = "") -> list[Piece]:
    """The pieces of `files` (path: its `storage.file_info`) in order (rules in the module docstring); an empty
    file is an error naming it."""
    pieces: list[Piece] = []
    for path, info in files.items():
        if info.size == 0:
            raise ValueError(f"{path}: file is empty.")
        cuts = [0, *_cuts(path, info.size, doc_split, piece_bytes, doc_separator), info.size]
        for start, end in zip(cuts, cuts[1:]):
            pieces.append(Piece(split, len(pieces), path, start, end, doc_split, doc_separator, info.version))
    return pieces


def _cuts(path: str, size: int, doc_split: str, piece_bytes: int, separator: str = "") -> list[int]:
    """Offsets, ascending and inside (0, size), just after a document boundary near each multiple of piece_bytes:
    after a `separator` line when one is set (`doc_split` is then unused, as in `text_files.text_documents`)."""
    if (doc_split == "file" and not separator) or size <= piece_bytes:
        return []
    pattern, cuts = _separator_line(separator) if separator else _CUTS[doc_split], []
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


def prepare_piece(piece: Piece, tok: TokenizerInfo, out: str, max_seq_length: int, dtype: str) -> dict[str, Any]:
    """Tokenizes and packs one piece into its shard (a Dask task); returns the shard's manifest entry.
    Skips the work when a complete shard of the same piece and settings exists."""
    # Without a separator the key is the one of a piece before separators existed: those shards stay complete.
    fields = {k: v for k, v in dataclasses.asdict(piece).items() if k != "doc_separator" or v}
    key = {**fields, "tokenizer": tok.fingerprint, "max_seq_length": max_seq_length, "dtype": dtype}
    name = shards.shard_name(piece.index)
    directory = storage.join(out, piece.split)
    record = storage.join(directory, f"{name}.json")
    done = storage.read_json(record)
    if done and done["piece"] == key:
        return done["entry"]
    tokens, lengths = _encode(_piece_documents(piece), tok)
    kept = lengths > 0
    entry = {"name": name, "documents": int(kept.sum()), "empty_documents": int((~kept).sum()),
             "tokens": len(tokens), "rows": 0, "last_row_length": max_seq_length, "padding": 0}
    rows = np.zeros((0, max_seq_length), dtype)
    if kept.any():
        offsets = np.concatenate([[0], np.cumsum(lengths[kept])])
        packed = pack_documents(tokens, offsets, max_seq_length=max_seq_length, bos_id=tok.bos_id,
                                eos_id=tok.eos_id, pad_id=tok.pad_id, drop_remainder=False)
        rows = packed.input_ids.astype(dtype)
        entry.update(rows=packed.num_rows, last_row_length=packed.last_row_length,
                     padding=max_seq_length - packed.last_row_length)
    npy = io.BytesIO()
    np.save(npy, rows)
    storage.makedirs(directory)
    storage.write_bytes(storage.join(directory, f"{name}.npy"), npy.getvalue())
    storage.write_json(record, {"piece": key, "entry": entry}, **shards.JSON_FORMAT)
    return entry


def _piece_documents(piece: Piece) -> list[str]:
    """The documents of a piece: its bytes decoded (a bad byte is an error naming the file and offset), line
    breaks read as "\\n" like Python's universal newlines, split by `doc_split`."""
    with storage.open_file(piece.path, "rb") as f:
        f.seek(piece.start)
        data = f.read(piece.end - piece.start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{piece.path}: not valid UTF-8 ({e.reason} at byte {piece.start + e.start}); "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    return text_files.split_text(text.replace("\r\n", "\n").replace("\r", "\n"), piece.doc_split, piece.doc_separator)


def _encode(documents: list[str], tok: TokenizerInfo) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [n], lengths int64 [documents]): the documents' ids back to back; whitespace-only ones are
    empty, as in `sources`. Ids become arrays batch by batch: a list of Python ints costs 9x the memory."""
    encode = EncodeBatch(tok.encode)
    tokens, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
    for i in range(0, len(documents), _ENCODE_BATCH):
        ids = encode(documents[i : i + _ENCODE_BATCH])["input_ids"]
        lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
        tokens.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths[-1].sum())))
    return np.concatenate(tokens), np.concatenate(lengths)


def prepare(
    train_sources: str | Sequence[str],
    tokenizer: Any,
    out: str,
    *,
    vocab_size: int,
    eval_sources: str | Sequence[str] | None = None,
    max_seq_length: int = 512,
    doc_split: str = "blank_line",
    doc_separator: str = "",
    format: str = "auto",
    piece_bytes: int = PIECE_BYTES,
    num_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares `out` (local or gs://) from text files and returns its manifest (rules in the module docstring).

    Args:
      train_sources, eval_sources: files, directories or globs of plain text (`format` "auto" or "text").
      tokenizer: anything `encoders.resolve_tokenizer` accepts.
      doc_split, doc_separator: the documents of a text file, as training splits them (`text_files.text_documents`).
      vocab_size: the largest token id + 1; it sets the dtype (`shards.token_dtype`).
      num_workers: worker processes of a local Dask cluster; ignored with `scheduler`, the address of a
        running Dask scheduler.
    """
    tok = resolve_tokenizer(tokenizer)
    dtype = shards.token_dtype(vocab_size).name
    splits = {"train": train_sources, "eval": eval_sources}
    files = {split: _text_files(src, format) for split, src in splits.items() if src}
    settings = {"format_version": shards.FORMAT_VERSION, "tokenizer": tok.fingerprint, "max_seq_length": max_seq_length,
                "dtype": dtype, "vocab_size": vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                "pad_id": tok.pad_id, "doc_split": doc_split, "piece_bytes": piece_bytes,
                "sources": {s: [[p, i.size, i.version] for p, i in fs.items()] for s, fs in files.items()},
                **({"doc_separator": doc_separator} if doc_separator else {})}
    if storage.exists(storage.join(out, shards.MANIFEST)):
        return _existing(out, settings)
    pieces = [p for split, fs in files.items() for p in plan_pieces(fs, split, doc_split, piece_bytes, doc_separator)]
    entries = _run(pieces, tok, out, max_seq_length, dtype, num_workers, scheduler, progress)
    manifest = {**settings, "splits": {}, "stats": {}}
    for split in files:
        split_entries = [entries[p] for p in pieces if p.split == split]
        totals = {k: sum(e[k] for e in split_entries) for k in ("documents", "empty_documents", "tokens", "rows",
                                                                 "padding")}
        if not totals["documents"]:
            raise ValueError(f"{splits[split]!r}: no non-empty documents ({totals['empty_documents']} empty ones).")
        manifest["splits"][split] = {"shards": split_entries, **totals}
        manifest["stats"].update({f"{split}/{k}": v for k, v in totals.items()})
    _remove_temporaries(out, files)
    storage.write_json(storage.join(out, shards.MANIFEST), manifest, **shards.JSON_FORMAT)
    return manifest


def _text_files(sources: str | Sequence[str], format: str) -> dict[str, storage.FileInfo]:
    """The files `sources` names, in order, each with its size and version; a file not plain text is an error."""
    files = {path: storage.file_info(path) for path in text_files.resolve_files(sources)}
    for path in files:
        if text_files.file_kind(path, format) != "text":
            raise ValueError(f"{path}: prepare reads plain text; this is {text_files.file_kind(path, format)}.")
    return files


def _existing(out: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest already in `out` when it was prepared with `settings` and every shard is whole; else an
    error naming the field (the source files that changed) or the shard."""
    manifest = shards.read_manifest(out)
    for key, value in settings.items():
        if manifest.get(key) != value:
            changed = _source_changes(manifest.get(key) or {}, value) if key == "sources" else []
            differs = (f"other source files: {'; '.join(changed)}" if changed
                       else f"{key}={manifest.get(key)!r}, this prepare has {value!r}")
            raise ValueError(f"{out} is already prepared with {differs}; choose another --out or delete it.")
    for split in manifest["splits"]:
        shards.check_shards(out, manifest, split)
    log.info("%s is already prepared", out)
    return manifest


def _source_changes(prepared: dict[str, list], now: dict[str, list]) -> list[str]:
    """One line per source file that differs between a manifest's `sources` and this prepare's ([path, size,
    version] by split): added, gone, or changed (size or version, i.e. written since)."""
    changes = []
    for split in sorted({*prepared, *now}):
        old = {path: rest for path, *rest in prepared.get(split, [])}
        new = {path: rest for path, *rest in now.get(split, [])}
        for path in [p for p in {**old, **new} if old.get(p) != new.get(p)]:
            if path not in new:
                changes.append(f"{path} ({split}) is not among this prepare's files")
            elif path not in old:
                changes.append(f"{path} ({split}) was not among the prepared files")
            else:
                changes.append(f"{path} ({split}) was written since ([size, version] {old[path]} -> {new[path]})")
    return changes


def _separator_line(separator: str) -> re.Pattern:
    """A line that is `separator`, whitespace around it aside, with the line break before it and after it."""
    return re.compile(rb"\n[ \t\r\f\v]*" + re.escape(separator.encode("utf-8")) + rb"[ \t\r\f\v]*\n")


def _run(pieces, tok, out, max_seq_length, dtype, num_workers, scheduler, progress) -> dict[Piece, dict]:
    """Runs `prepare_piece` over `pieces` on a Dask cluster, with a progress bar of documents/s and tokens/s."""
    from distributed import Client, as_completed
    from tqdm import tqdm

    # One tokenizer thread per worker process: the cluster already uses every core.
    cluster = {"address": scheduler} if scheduler else {
        "n_workers": num_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
        "env": {"RAYON_NUM_THREADS": "1"}, "silence_logs": logging.WARNING}
    logging.getLogger("distributed").setLevel(logging.WARNING)  # not one line per worker start and stop
    with Client(**cluster) as client, tqdm(total=len(pieces), unit="shard", disable=not progress) as bar:
        tok_future = client.scatter(tok, broadcast=True)
        futures = {client.submit(prepare_piece, p, tok_future, out, max_seq_length, dtype): p
                   for p in pieces}
        entries, docs, tokens, t0 = {}, 0, 0, time.perf_counter()
        for future in as_completed(futures):
            entries[futures[future]] = entry = future.result()
            docs, tokens = docs + entry["documents"], tokens + entry["tokens"]
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s {tokens / elapsed:,.0f} tokens/s", refresh=False)
            bar.update()
    return entries


def _remove_temporaries(out: str, splits) -> None:
    """Deletes the temporary files a killed run left behind (`storage.write_bytes`'s `*.partial-*`, and the
    `.*.tmp-*` of earlier versions), so a finished directory holds only its shards."""
    for split in splits:
        for pattern in (".*.tmp-*", "*.partial-*"):
            for path in storage.glob_files(storage.join(out, split, pattern)):
                storage.remove(path)
