"""Corpora: text, JSON lines or Parquet files (or a Hub dataset) → documents → token ids, cached.

Sources. `format="auto"` picks by extension: `.jsonl`/`.json` → JSON lines, `.parquet` →
Parquet (both read `text_field`), anything else → plain text. A source is a file, a directory
(every non-hidden file under it, sorted) or a glob. `format="hub"` reads `datasets.load_dataset`
(name, `hub_config`, split `hub_split`) and is keyed in the cache by those names only.

Documents in text files (`doc_split`):
  - "blank_line": a document is a run of non-blank lines; any run of blank (whitespace-only)
    lines separates two documents and is not itself a document. Line breaks inside a document
    are kept; `\\r\\n` is read as `\\n`.
  - "line": every line is a document (WikiText-style rows).
  - "file": every file is one document.
With `doc_separator` set (e.g. "<|endoftext|>"), a document is the text between lines that are the
separator (whitespace around it aside), whatever `doc_split` says; the separator lines are dropped.
A document whose text is empty or whitespace-only (a JSON record, a blank line in "line" mode),
or that tokenizes to no ids, is skipped and counted in `num_empty_documents`.

Reading text files and checking files is `text_files`'s part.

Files on `gs://` (`roberta_jax.storage`). Text files are streamed, as local ones are read: once to check them,
once to split them into documents, which go straight into the local arrow file below, so the corpus is never
copied whole beside it. JSON lines and Parquet files are staged: `datasets` reads only local files (and turns
them into its own arrow copy anyway), so each remote file is downloaded once into `cache_dir/staged/`, named
by its path, size and generation, and reused while the object is unchanged. The cache itself is
memory-mapped, so `cache_dir` must be local (a workdir on `gs://` gets a local one from the training side).

Compressed text and JSON lines files (`.gz .bz2 .xz .zst`) are streamed as `prepare` streams them
(`readers`): the same documents, whether a run tokenizes them here or reads them prepared.

Errors. A text or JSON file that is empty, whitespace-only or not valid UTF-8, and an empty
Parquet file, raise ValueError naming the path, before `datasets` reads anything (a compressed file as
it is read).

Tokenizing is `Dataset.map(batched=True, num_proc=...)`, ids without special tokens. With
`cache_dir`, the result is stored as `tokens.npy` (int32, documents back to back) and
`doc_offsets.npy` (int64) in `cache_dir/tokenized-<fingerprint>/` and memory-mapped on the next
run, which then reads neither the text nor the tokenizer. The fingerprint covers the format,
text field, document split, every file's absolute path (its URL on `gs://`), size and modification
time (the object's generation on `gs://`), and the
tokenizer (the serialized JSON of a `tokenizers.Tokenizer` backend; for a plain callable, the
`fingerprint` given to `encoders.resolve_tokenizer`, else `datasets`' hash of the callable).
`datasets`' own arrow files live in `cache_dir/hf/` and may be deleted once the `.npy` files exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from roberta_jax import storage
from roberta_jax.data import readers, text_files
from roberta_jax.data.encoders import EncodeBatch, EncodeFn, resolve_tokenizer, sha256

# Bump when the cached format or the document rules change.
_CACHE_VERSION = 1
_DOC_SPLITS = ("blank_line", "line", "file")
_FORMATS = ("auto", "text", "json", "parquet", "hub")

@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """A tokenized corpus as flat arrays.

    Attributes:
      tokens: int32 [num_tokens], the non-empty documents back to back, no special tokens.
      doc_offsets: int64 [num_documents + 1]; document i is tokens[doc_offsets[i]:doc_offsets[i+1]].
      num_empty_documents: documents skipped because they were empty.
      from_cache: whether this was read from `cache_dir` without tokenizing.
      fingerprint: the cache key.
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    num_empty_documents: int
    from_cache: bool
    fingerprint: str

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def tokenize_corpus(
    sources: str | Sequence[str],
    tokenizer: Any,
    *,
    format: str = "auto",
    text_field: str = "text",
    doc_split: str = "blank_line",
    doc_separator: str = "",
    hub_config: str | None = None,
    hub_split: str = "train",
    num_proc: int = 1,
    batch_size: int = 1000,
    cache_dir: str | None = None,
) -> TokenizedCorpus:
    """Reads and tokenizes a corpus (rules in the module docstring); `cache_dir=None` disables caching.

    `tokenizer` is anything `resolve_tokenizer` accepts.
    """
    tok = resolve_tokenizer(tokenizer)
    if format not in _FORMATS:
        raise ValueError(f"format={format!r} is not one of {_FORMATS}.")
    if doc_split not in _DOC_SPLITS:
        raise ValueError(f"doc_split={doc_split!r} is not one of {_DOC_SPLITS}.")
    _check_local(cache_dir)
    files, kind, source_key = _resolve_sources(sources, format, hub_config, hub_split)
    source_fp = sha256(json.dumps([_CACHE_VERSION, kind, text_field, doc_split, source_key]
                                   + ([doc_separator] if doc_separator else [])))
    fingerprint = sha256(source_fp + tok.fingerprint)

    final_dir = os.path.join(cache_dir, f"tokenized-{fingerprint}") if cache_dir else None
    if final_dir and os.path.exists(os.path.join(final_dir, "meta.json")):
        return _load_cached(final_dir, fingerprint)

    for path in files:
        if not text_files.compression(path):  # a compressed file is checked as it streams (`readers`)
            text_files.check_file(path, kind)
    with _scratch_dir(cache_dir) as work_dir:
        docs = _documents(kind, files, sources, text_field, (doc_split, doc_separator), hub_config, hub_split,
                          work_dir, source_fp)
        ids = _encode_documents(docs, tok.encode, batch_size, num_proc, fingerprint)
        out_dir = f"{final_dir}.tmp-{uuid.uuid4().hex}" if final_dir else None
        tokens, offsets, num_empty = _flatten(ids, out_dir)
    if not len(offsets) > 1:
        raise ValueError(f"{sources!r}: no non-empty documents ({num_empty} empty ones).")
    if out_dir is None:
        return TokenizedCorpus(tokens, offsets, num_empty, False, fingerprint)
    del tokens, offsets  # closes the memmap before its directory is renamed
    meta = {"num_empty_documents": num_empty, "sources": source_key, "tokenizer": tok.fingerprint}
    corpus = _publish(out_dir, final_dir, meta, fingerprint)
    return dataclasses.replace(corpus, from_cache=False)


def document_texts(
    sources: str | Sequence[str],
    *,
    format: str = "auto",
    text_field: str = "text",
    doc_split: str = "blank_line",
    doc_separator: str = "",
    hub_config: str | None = None,
    hub_split: str = "train",
    cache_dir: str | None = None,
) -> Iterator[str]:
    """The non-blank document texts of a corpus, read exactly as `tokenize_corpus` reads them (files,
    directories and globs; text, JSON lines, Parquet or the Hub; `text_field`; the document split): what a
    tokenizer is trained on. Compressed files (`.gz .bz2 .xz .zst`) are read as `prepare` reads them
    (`readers`), so a tokenizer can be trained for a compressed corpus that is then prepared."""
    _check_local(cache_dir)
    files, kind, _ = _resolve_sources(sources, format, hub_config, hub_split)
    for path in files:
        if not text_files.compression(path):  # a compressed file is checked as it streams (`readers`)
            text_files.check_file(path, kind)
    compressed = any(map(text_files.compression, files))
    if kind == "text" or compressed:
        for texts in _text_batches(kind, files, text_field, (doc_split, doc_separator)):
            # plain text as it always was read (a blank line in "line" mode included); compressed JSON lines
            # as the other JSON lines: non-blank texts only
            yield from (text for text in texts if text.strip()) if compressed else texts
        return
    with _scratch_dir(cache_dir) as work_dir:
        docs = _documents(kind, files, sources, text_field, (doc_split, doc_separator), hub_config, hub_split,
                          work_dir, source_fp="")
        for batch in docs.iter(batch_size=1000):
            yield from (text for text in batch["text"] if text and text.strip())


def split_documents(num_documents: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic document split: (train indices, eval indices), each ascending.

    `round(eval_fraction * num_documents)` documents, chosen by a permutation seeded with `seed`,
    are held out.
    """
    num_eval = round(eval_fraction * num_documents)
    if not 0 < num_eval < num_documents:
        raise ValueError(
            f"eval_fraction={eval_fraction} of {num_documents} documents holds out {num_eval}; "
            "it must leave at least one document on each side."
        )
    held_out = np.zeros(num_documents, bool)
    held_out[np.random.default_rng(seed).permutation(num_documents)[:num_eval]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def _resolve_sources(
    sources: str | Sequence[str], format: str, hub_config: str | None, hub_split: str
) -> tuple[list[str], str, Any]:
    """(files, kind, key): the files of `sources`, their one format ("text", "json", "parquet"; "hub"
    without files) and what names them in the cache key (each file's absolute path or URL, size and version,
    `storage.file_info`'s; the Hub names)."""
    if format == "hub":
        return [], "hub", [sources, hub_config, hub_split]
    files = text_files.resolve_files(sources)
    kinds = [text_files.file_kind(path, format) for path in files]
    if len(set(kinds)) > 1:
        raise ValueError(f"sources mix formats {sorted(set(kinds))}; pass one format at a time.")
    infos = [storage.file_info(p) for p in files]
    source_key = [[storage.resolve(p), info.size, info.version] for p, info in zip(files, infos)]
    return files, kinds[0] if kinds else "hub", source_key


def _encode_documents(docs, encode: EncodeFn, batch_size: int, num_proc: int, fingerprint: str):
    """`docs` ("text" column) → a `datasets.Dataset` with one int32 list column "input_ids", one row
    per document (empty for an empty one), encoded by `num_proc` processes."""
    import datasets

    return docs.map(
        EncodeBatch(encode),
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc > 1 else None,
        input_columns=["text"],
        remove_columns=docs.column_names,
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        new_fingerprint=fingerprint,
        desc="Tokenizing",
    )


def _publish(out_dir: str, final_dir: str, meta: dict[str, Any], fingerprint: str) -> TokenizedCorpus:
    """Completes the cache entry written in `out_dir` with `meta.json`, moves it to `final_dir` and
    reads it back (memory-mapped)."""
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.rename(out_dir, final_dir)
    except OSError:  # another process finished first; its result is identical
        shutil.rmtree(out_dir, ignore_errors=True)
    return _load_cached(final_dir, fingerprint)


def _documents(kind, files, sources, text_field, split, hub_config, hub_split, work_dir, source_fp):
    """A `datasets.Dataset` with one column "text", one row per document (empty ones included); `split`:
    (doc_split, doc_separator) of text files."""
    import datasets

    hf_dir = os.path.join(work_dir, "hf")
    if kind == "text" or any(map(text_files.compression, files)):
        # Written as arrow record batches directly: `Dataset.from_generator` costs ~80 us a row.
        path = os.path.join(hf_dir, f"documents-{source_fp}.arrow")
        if not os.path.exists(path):
            os.makedirs(hf_dir, exist_ok=True)
            schema = pa.schema({"text": pa.string()})
            tmp_path = f"{path}.tmp-{uuid.uuid4().hex}"
            with pa.OSFile(tmp_path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for texts in _text_batches(kind, files, text_field, split):
                    writer.write_batch(pa.record_batch([pa.array(texts, pa.string())], schema=schema))
            os.replace(tmp_path, path)
        return datasets.Dataset.from_file(path)
    if kind == "hub":
        ds = datasets.load_dataset(sources, hub_config, split=hub_split, cache_dir=hf_dir)
    else:
        try:
            local = [storage.local_path(p) or _staged(p, work_dir) for p in files]
            ds = datasets.load_dataset(kind, data_files=local, split="train", cache_dir=hf_dir)
        except datasets.exceptions.DatasetGenerationError as err:
            raise _unreadable(files, err) from err
    if text_field not in ds.column_names:
        raise ValueError(f"{sources!r} has no field {text_field!r}; its fields are {ds.column_names}. Set text_field.")
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


def _text_batches(kind, files, text_field, split) -> Iterator[list[str]]:
    """Lists of document texts, empty ones included: plain text files by `text_files`' rules; a corpus with
    compressed files (text or JSON lines) streamed piece by piece as `prepare` reads it (`readers`), so a
    `.jsonl.gz` trains as it prepares."""
    if not any(map(text_files.compression, files)):
        yield from text_files.text_documents(files, *split)
        return
    reading = readers.Reading(kind, text_field, *split)
    for piece in readers.plan_pieces(files, reading, piece_bytes=1 << 62):
        batch = []
        for text in readers.piece_documents(piece):
            batch.append(text)
            if len(batch) == 1000:
                yield batch
                batch = []
        if batch:
            yield batch


def _unreadable(files: Sequence[str], err: Exception) -> ValueError:
    """The error of a JSON-lines or Parquet corpus `datasets` could not read, naming the file (and for JSON
    lines the line) at fault where it can be found."""
    for path in files:
        if not path.endswith(".jsonl"):
            continue
        with storage.open_file(path, "r", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.strip() and json.loads(line)
                except ValueError as bad:
                    return ValueError(f"{path}, line {number}: not valid JSON ({bad})")
    return ValueError(f"{', '.join(files[:3])}{' ...' if len(files) > 3 else ''}: {err.__cause__ or err}")


def _staged(path: str, work_dir: str) -> str:
    """A local copy of the remote file `path` in `work_dir/staged/`, named by its URL, size and generation: made
    once (written aside and renamed), reused while the object is unchanged."""
    info = storage.file_info(path)
    local = os.path.join(work_dir, "staged", sha256(json.dumps([path, info.size, info.version]))[:16],
                         storage.name(path))
    if not os.path.exists(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        partial = f"{local}.partial-{uuid.uuid4().hex}"
        storage.copy_file(path, partial)
        os.replace(partial, local)
    return local


def _check_local(cache_dir: str | None) -> None:
    """The data cache is memory-mapped: `cache_dir` on object storage is an error naming it."""
    if cache_dir and storage.local_path(cache_dir) is None:
        raise ValueError(f"cache_dir={cache_dir}: the data cache is memory-mapped, so it must be a local directory; "
                         "set data.cache_dir to a local path (inputs may stay on gs://).")


def _flatten(ids, out_dir: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The "input_ids" column → (tokens int32, doc_offsets int64, number of empty documents)."""
    chunks = [c for c in ids.data.table.column("input_ids").chunks if len(c)]
    lengths = [pc.list_value_length(c).to_numpy(zero_copy_only=False).astype(np.int64) for c in chunks]
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    kept = all_lengths[all_lengths > 0]
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    if out_dir is None:
        tokens = np.empty(int(offsets[-1]), np.int32)
    else:
        os.makedirs(out_dir, exist_ok=True)
        np.save(os.path.join(out_dir, "doc_offsets.npy"), offsets)
        tokens = np.lib.format.open_memmap(
            os.path.join(out_dir, "tokens.npy"), mode="w+", dtype=np.int32, shape=(int(offsets[-1]),)
        )
    position = 0
    for chunk in chunks:
        values = chunk.flatten().to_numpy()
        tokens[position : position + len(values)] = values
        position += len(values)
    if out_dir is not None:
        tokens.flush()
    return tokens, offsets, int((all_lengths == 0).sum())


def _load_cached(directory: str, fingerprint: str) -> TokenizedCorpus:
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    return TokenizedCorpus(
        np.load(os.path.join(directory, "tokens.npy"), mmap_mode="r"),
        np.load(os.path.join(directory, "doc_offsets.npy")),
        int(meta["num_empty_documents"]),
        True,
        fingerprint,
    )


@contextlib.contextmanager
def _scratch_dir(cache_dir: str | None) -> Iterator[str]:
    """`cache_dir` itself, or a temporary directory removed afterwards when caching is off."""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        yield cache_dir
    else:
        with tempfile.TemporaryDirectory(prefix="roberta_jax_data_") as tmp:
            yield tmp
