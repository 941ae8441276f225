"""Tokenize and pack a corpus once, in parallel on Dask, into the shards of `shards` (format there).

    manifest = prepare(["corpus/"], tokenizer, "gs://bucket/prepared", max_seq_length=512, num_workers=16)

Pieces (`readers`). What train.py reads, prepare reads: plain text, JSON lines and Parquet files, compressed or
not (`.gz .bz2 .xz .zst`), or a Hub dataset / local dataset directory (`format="hub"`), with the same `text_field`
and document rules. A plain text or JSON-lines file is cut into pieces of about `piece_bytes` bytes (16 MiB by
default), each cut right after a document boundary (a blank line, a line break or a `doc_separator` line for text
by `doc_split`, a line break for JSON lines; a "file" document is never cut); a compressed file is one piece, read
as a stream; a Parquet row group is one piece; a dataset shard is one piece. The pieces depend only on the
sources, so piece i's shard is the same whatever the number of workers or machines. Piece i of a split becomes
`shard-{i:05d}` of that split, in source order. `prepare` prepares one source (its files, format and text field)
into one directory.

A shard's end. Each piece's documents are packed FULL-SENTENCES (`packing.StreamPacker`) on their own,
streamed from the reader through the tokenizer into the shard's `.npy` (`shards.RowStream`), so no step
holds a whole file or all of a piece's ids; the stream's tail is kept as a last row padded with `<pad>` (its
real length is in the manifest, the attention mask hides the rest). So no token is lost or duplicated; per
shard at most one row is short, and the manifest counts the padding (`train/padding`, in tokens). Rows never
span two shards.

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
import itertools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from roberta_jax import storage
from roberta_jax.data import readers, shards, text_files
from roberta_jax.data.encoders import EncodeBatch, TokenizerInfo, resolve_tokenizer
from roberta_jax.data.packing import StreamPacker

log = logging.getLogger(__name__)

PIECE_BYTES = 16 << 20
_ENCODE_BATCH = 1000  # documents per tokenizer call


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard `index` of `split`: what one Dask task makes, from one piece (`readers.Piece`)."""

    split: str
    index: int
    piece: readers.Piece


def plan_shards(files: Mapping[str, Any], split: str, reading: readers.Reading, piece_bytes: int = PIECE_BYTES,
                sources: str | Sequence[str] = ()) -> list[Shard]:
    """The shards of one split, in order: one per piece of `readers.plan_pieces` (rules in the module
    docstring). `files`: `readers.resolve`'s answer ({} for a Hub dataset, named by `sources`)."""
    pieces = readers.plan_pieces(sources, reading, piece_bytes, files=files or None)
    return [Shard(split, i, piece) for i, piece in enumerate(pieces)]


def _shard_key(shard: Shard) -> dict[str, Any]:
    """What a complete shard's record must match. For plain text, the key of the pieces before other formats
    (and, without a separator, before separators) existed: those shards stay complete."""
    p, r = shard.piece, shard.piece.reading
    key = {"split": shard.split, "index": shard.index, "path": p.path, "start": p.start, "end": p.stop,
           "doc_split": r.doc_split, "version": p.version, **({"doc_separator": r.doc_separator} if r.doc_separator
                                                              else {})}
    if p.kind != "text":
        key.update(kind=p.kind, text_field=r.text_field)
    if p.kind == "hub":
        key.update(hub_config=r.hub_config, hub_split=r.hub_split)
    return key


def prepare_piece(shard: Shard, tok: TokenizerInfo, out: str, max_seq_length: int, dtype: str) -> dict[str, Any]:
    """Tokenizes and packs one piece into its shard (a Dask task); returns the shard's manifest entry.
    Skips the work when a complete shard of the same piece and settings exists. Documents stream from the
    reader through the tokenizer and the packer into the `.npy` (`shards.RowStream`): a worker holds at most a
    plain piece's bytes (about `piece_bytes`), a row group, or a batch of a compressed file's documents."""
    key = {**_shard_key(shard), "tokenizer": tok.fingerprint, "max_seq_length": max_seq_length, "dtype": dtype}
    name = shards.shard_name(shard.index)
    directory = storage.join(out, shard.split)
    record = storage.join(directory, f"{name}.json")
    done = storage.read_json(record)
    if done and done["piece"] == key:
        return done["entry"]
    storage.makedirs(directory)
    with shards.RowStream(storage.join(directory, f"{name}.npy"), max_seq_length, dtype) as rows:
        packer = StreamPacker(max_seq_length, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              emit=rows.write)
        counts = {"documents": 0, "empty_documents": 0, "tokens": 0}
        for ids in _encoded(readers.piece_documents(shard.piece), tok):
            kept = [x for x in ids if len(x)]
            packer.add(kept)
            counts["documents"] += len(kept)
            counts["empty_documents"] += len(ids) - len(kept)
            counts["tokens"] += sum(map(len, kept))
        last = packer.finish()
    entry = {"name": name, **counts, "rows": packer.num_rows, "last_row_length": last,
             "padding": max_seq_length - last}
    storage.write_json(record, {"piece": key, "entry": entry}, **shards.JSON_FORMAT)
    return entry


def _encoded(documents: Iterator[str], tok: TokenizerInfo) -> Iterator[list]:
    """The documents' ids, `_ENCODE_BATCH` documents at a time; whitespace-only ones are empty, as in `sources`."""
    encode = EncodeBatch(tok.encode)
    while batch := list(itertools.islice(documents, _ENCODE_BATCH)):
        yield encode(batch)["input_ids"]


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
    text_field: str = "text",
    hub_config: str | None = None,
    hub_split: str = "train",
    piece_bytes: int = PIECE_BYTES,
    num_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares `out` (local or gs://) from one source and returns its manifest (rules in the module docstring).

    Args:
      train_sources, eval_sources: files, directories or globs (text, JSON lines, Parquet, compressed or not:
        `format` "auto" picks by extension), or with `format="hub"` a Hub dataset name or a local dataset
        directory, read by `datasets` (`hub_config`, split `hub_split`).
      tokenizer: anything `encoders.resolve_tokenizer` accepts.
      doc_split, doc_separator: the documents of a text file, as training splits them (`text_files.text_documents`).
      text_field: the text of a JSON, Parquet or Hub record.
      vocab_size: the largest token id + 1; it sets the dtype (`shards.token_dtype`).
      num_workers: worker processes of a local Dask cluster; ignored with `scheduler`, the address of a
        running Dask scheduler.
    """
    tok = resolve_tokenizer(tokenizer)
    dtype = shards.token_dtype(vocab_size).name
    reading = readers.Reading(format, text_field, doc_split, doc_separator, hub_config, hub_split)
    splits = {split: src for split, src in {"train": train_sources, "eval": eval_sources}.items() if src}
    files = {split: readers.resolve(src, reading) for split, src in splits.items()}
    settings = {"format_version": shards.FORMAT_VERSION, "tokenizer": tok.fingerprint, "max_seq_length": max_seq_length,
                "dtype": dtype, "vocab_size": vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                "pad_id": tok.pad_id, "doc_split": doc_split, "piece_bytes": piece_bytes,
                "sources": {s: [[p, i.size, i.version] for p, i in fs.items()] for s, fs in files.items()},
                **_reading_settings(reading, files, splits)}
    if storage.exists(storage.join(out, shards.MANIFEST)):
        return _existing(out, settings)
    jobs = [j for split, fs in files.items() for j in plan_shards(fs, split, reading, piece_bytes, splits[split])]
    entries = _run(jobs, tok, out, max_seq_length, dtype, num_workers, scheduler, progress)
    manifest = {**settings, "splits": {}, "stats": {}}
    for split in files:
        split_entries = [entries[j] for j in jobs if j.split == split]
        totals = {k: sum(e[k] for e in split_entries) for k in ("documents", "empty_documents", "tokens", "rows",
                                                                 "padding")}
        if not totals["documents"]:
            raise ValueError(f"{splits[split]!r}: no non-empty documents ({totals['empty_documents']} empty ones).")
        manifest["splits"][split] = {"shards": split_entries, **totals}
        manifest["stats"].update({f"{split}/{k}": v for k, v in totals.items()})
    _remove_temporaries(out, files)
    storage.write_json(storage.join(out, shards.MANIFEST), manifest, **shards.JSON_FORMAT)
    return manifest


def _reading_settings(reading: readers.Reading, files: dict[str, dict], splits: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields of how the source was read beyond plain text's (none for plain text, so directories
    prepared before other formats existed stay complete): the separator, the text field, the Hub names."""
    settings: dict[str, Any] = {"doc_separator": reading.doc_separator} if reading.doc_separator else {}
    kinds = {text_files.file_kind(path, reading.format) for fs in files.values() for path in fs}
    if reading.format == "hub" or kinds - {"text"}:
        settings["text_field"] = reading.text_field
    if reading.format == "hub":
        settings["hub"] = {split: [src, reading.hub_config, reading.hub_split] for split, src in splits.items()}
    return settings


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


def _run(jobs, tok, out, max_seq_length, dtype, num_workers, scheduler, progress) -> dict[Shard, dict]:
    """Runs `prepare_piece` over `jobs` on a Dask cluster, with a progress bar of documents/s and tokens/s."""
    from distributed import Client, as_completed
    from tqdm import tqdm

    # One tokenizer thread per worker process: the cluster already uses every core.
    cluster = {"address": scheduler} if scheduler else {
        "n_workers": num_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
        "env": {"RAYON_NUM_THREADS": "1"}, "silence_logs": logging.WARNING}
    logging.getLogger("distributed").setLevel(logging.WARNING)  # not one line per worker start and stop
    with Client(**cluster) as client, tqdm(total=len(jobs), unit="shard", disable=not progress) as bar:
        tok_future = client.scatter(tok, broadcast=True)
        futures = {client.submit(prepare_piece, j, tok_future, out, max_seq_length, dtype): j for j in jobs}
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
