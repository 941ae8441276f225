"""Prepared pretraining data on disk: shards of packed rows plus a manifest, and the rows they hold.

    DIR/manifest.json            format version, tokenizer fingerprint, max_seq_length, dtype, special ids,
                                 the statistics of each split, and every shard's row count
    DIR/tokenizer/               the tokenizer the rows were made with (when prepare trained it, with the
                                 `tokenizer.*` fields it was trained with in trained_with.json)
    DIR/train/shard-00000.npy    uint16 [rows, max_seq_length] (int32 when the vocabulary exceeds 65,536)
    DIR/train/shard-00000.json   that shard's piece of text and its counts (written after the .npy)
    DIR/eval/...                 the same for `data.eval_files`

A mixture of named sources (`data.sources`) is prepared into one directory per source, each of the layout above,
and a top manifest that lists them (`write_mixture_manifest`, `mixture_directories`):

    DIR/mixture.json             format version, tokenizer fingerprint, max_seq_length, and per source its
                                 directory, weight and the rows and tokens of each split
    DIR/tokenizer/               the tokenizer of every source (also copied into each DIR/<name>/tokenizer)
    DIR/<name>/manifest.json ... source <name>, prepared as a single source

Every file is written whole or not at all (`storage.write_bytes`: locally under a temporary name and renamed,
on `gs://` one object), and the manifest is written last: a directory without `manifest.json` is unfinished
and is never read (`prepare` completes it). Paths are local or `gs://` (`roberta_jax.storage`).

`ShardedRows` checks that every shard of its split is there and of its size (`check_shards`) and reads
the split as one table of rows (global row r of the split is row r - start of its
shard), memory-mapping local shards and reading only the requested rows of remote ones, so a host
opens only the shards holding its share of a batch.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from roberta_jax import storage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MIXTURE_MANIFEST = "mixture.json"
TOKENIZER = "tokenizer"
SPLITS = ("train", "eval")
JSON_FORMAT = {"indent": 1, "sort_keys": True}  # `json.dumps` options of the manifest and the shard records


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (roberta-base's 50,265 do), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared directory; a clear error when there is none (unfinished) or its format
    is another version."""
    path = storage.join(os.fspath(directory), MANIFEST)
    if not storage.exists(path):
        storage.check_access(path)
        if storage.exists(storage.join(os.fspath(directory), MIXTURE_MANIFEST)):
            names = ", ".join(mixture_directories(directory))
            raise ValueError(f"{directory} is a mixture of the sources {names}, each prepared in its own directory: "
                             "train from it with data.sources naming them (configs/mixture.py).")
        raise FileNotFoundError(
            f"{directory}: no {MANIFEST}; not a prepared directory, or its prepare did not finish (run it again)."
        )
    try:
        manifest = json.loads(storage.read_text(path))
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"{path} is damaged ({e}); delete it and run the same prepare again, which rewrites it from the shards."
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')}, this code reads {FORMAT_VERSION}; prepare again."
        )
    return manifest


def write_mixture_manifest(directory: str, manifests: dict[str, dict[str, Any]], weights: dict[str, float]) -> dict:
    """Writes DIR/mixture.json for the sources prepared in DIR/<name> (`manifests`: each one's manifest), the rows
    and tokens of each of their splits, and returns it. Written last, like a source's manifest."""
    first = next(iter(manifests.values()))
    mixture = {"format_version": FORMAT_VERSION, "tokenizer": first["tokenizer"],
               "max_seq_length": first["max_seq_length"], "sources": {}}
    for name, manifest in manifests.items():
        splits = {split: {k: manifest["splits"][split][k] for k in ("documents", "rows", "tokens")}
                  for split in manifest["splits"]}
        mixture["sources"][name] = {"directory": name, "weight": weights[name], "splits": splits}
    storage.write_json(storage.join(directory, MIXTURE_MANIFEST), mixture, **JSON_FORMAT)
    return mixture


def mixture_directories(directory: str | os.PathLike) -> dict[str, str]:
    """{source name: its prepared directory} of the mixture prepared in `directory` (its mixture.json)."""
    directory = os.fspath(directory)
    mixture = storage.read_json(storage.join(directory, MIXTURE_MANIFEST))
    if mixture is None:
        raise FileNotFoundError(f"{directory}: no {MIXTURE_MANIFEST}; not a prepared mixture, or its prepare did not "
                                "finish (run it again).")
    return {name: storage.join(directory, entry["directory"]) for name, entry in mixture["sources"].items()}


def check_shards(directory: str | os.PathLike, manifest: dict[str, Any], split: str) -> None:
    """Raises an error naming the directory, the shard and the manifest when a shard the manifest lists for
    `split` is missing or not the size of its rows (.npy header included): before step 1, not when a batch
    first needs it. One listing of the split (`storage.file_sizes`), however many shards."""
    directory = os.fspath(directory)
    folder = storage.join(directory, split)
    listed = {storage.name(p): size for p, size in storage.file_sizes(folder).items()}
    for entry in manifest["splits"][split]["shards"]:
        name = f"{entry['name']}.npy"
        expected = npy_size((entry["rows"], manifest["max_seq_length"]), manifest["dtype"])
        found = listed.get(name)
        if found != expected:
            what = "missing" if found is None else f"{found} bytes"
            rows = f"{entry['rows']} rows of {manifest['max_seq_length']} {manifest['dtype']} ids"
            raise _damaged(directory, split, entry["name"],
                           f"{split}/{name} is {what}, {MANIFEST} lists {rows} ({expected} bytes)")


def npy_size(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of the `.npy` file `np.save` writes for a C-order array of `shape` and `dtype`: header and data."""
    header = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.tell() + math.prod(shape) * np.dtype(dtype).itemsize


class RowStream:
    """A `.npy` file of rows [n, width] written row batch by row batch, never held whole: the rows go to a local
    file under a temporary name, the header's row count is patched in at `close`, and only then is the file
    put at `path` (renamed locally, uploaded as one object on gs://). The bytes are those of `np.save` of the
    same array: numpy pads the header so the row count may grow to 21 digits in place.

        with RowStream(path, 512, "uint16") as out:
            out.write(rows)        # int [k, 512], any k
        # on an exception nothing is at `path`, and the temporary file is gone
    """

    def __init__(self, path: str, width: int, dtype: str):
        self.path, self.width, self.dtype, self.num_rows = path, width, np.dtype(dtype), 0
        local = storage.local_path(path)
        if local:  # beside the target (same filesystem for the rename); prepare sweeps `*.partial-*` leftovers
            self._tmp = f"{local}.partial-{uuid.uuid4().hex[:8]}"
        else:
            fd, self._tmp = tempfile.mkstemp(suffix=".npy", prefix="roberta_jax-rows-")
            os.close(fd)
        self._local, self._file = local, open(self._tmp, "wb")
        self._write_header()

    def write(self, rows: np.ndarray) -> None:
        """Appends rows, int [k, width], cast to the stream's dtype."""
        self._file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.num_rows += len(rows)

    def close(self) -> None:
        """Patches the row count into the header and puts the file at `path`."""
        self._file.seek(0)
        self._write_header()
        self._file.close()
        if self._local:
            os.replace(self._tmp, self._local)
        else:
            storage.copy_file(self._tmp, self.path)
            os.remove(self._tmp)

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, kind, *_) -> None:
        self.abort() if kind else self.close()

    def _write_header(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.num_rows, self.width)}
        np.lib.format.write_array_header_1_0(self._file, header)


def _damaged(directory: str, split: str, shard: str, problem: str) -> ValueError:
    """The error for a shard that is not what the manifest says, with the two ways to repair the directory."""
    record = storage.join(directory, split, f"{shard}.json")
    return ValueError(
        f"prepared directory {directory} is damaged: {problem}. Copy the directory again, or delete {record} and "
        f"{storage.join(directory, MANIFEST)} and rerun the same prepare, which rewrites that shard."
    )


def check_manifest(manifest: dict[str, Any], directory: str, tokenizer_fingerprint: str, max_seq_length: int) -> None:
    """Raises ValueError naming both values when the run's tokenizer or row length is not the prepared one."""
    if manifest["max_seq_length"] != max_seq_length:
        raise ValueError(
            f"{directory} holds rows of max_seq_length={manifest['max_seq_length']}, the config asks for "
            f"data.max_seq_length={max_seq_length}; prepare again or set the config to match."
        )
    if manifest["tokenizer"] != tokenizer_fingerprint:
        raise ValueError(
            f"{directory} was tokenized by tokenizer {manifest['tokenizer'][:16]}..., this run's tokenizer is "
            f"{tokenizer_fingerprint[:16]}...; use the tokenizer in {directory}/{TOKENIZER} (tokenizer.path='') or "
            "prepare again with this one."
        )


class ShardedRows:
    """The packed rows of one split of a prepared directory, as one table; the interface of `PackedRows`
    that `BatchIterator` uses (`num_rows`, `max_seq_length`, `pad_id`, `has_padding`, `row_lengths`,
    `take`). The last row of each shard may be padded; `row_lengths` knows by how much.

    Attributes:
      shards_opened: names of the shards this object has opened so far (a host opens only its share's).
      rows_read: how many rows `take` has returned.
    """

    def __init__(self, directory: str | os.PathLike, split: str = "train", manifest: dict[str, Any] | None = None):
        self.directory = os.fspath(directory)
        manifest = manifest or read_manifest(directory)
        if split not in manifest["splits"]:
            raise ValueError(f"{directory} has no {split!r} split; it has {sorted(manifest['splits'])}.")
        check_shards(directory, manifest, split)
        shards = [s for s in manifest["splits"][split]["shards"] if s["rows"]]
        self.split, self.pad_id, self.dtype = split, manifest["pad_id"], np.dtype(manifest["dtype"])
        self.max_seq_length = manifest["max_seq_length"]
        self._names = [s["name"] for s in shards]
        self._starts = np.concatenate([[0], np.cumsum([s["rows"] for s in shards])]).astype(np.int64)
        self._last_lengths = np.array([s["last_row_length"] for s in shards], np.int32)
        self._open: dict[int, np.ndarray | _RemoteShard] = {}
        self._lock = threading.Lock()  # `take` runs in read-ahead threads
        self.shards_opened: set[str] = set()
        self.rows_read = 0

    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    @property
    def has_padding(self) -> bool:
        return bool((self._last_lengths < self.max_seq_length).any())

    def row_lengths(self, rows: np.ndarray) -> np.ndarray:
        """Real-token counts, int32 [len(rows)]."""
        rows = np.asarray(rows, np.int64)
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        lengths = np.full(rows.shape, self.max_seq_length, np.int32)
        last = rows == self._starts[shard + 1] - 1
        lengths[last] = self._last_lengths[shard[last]]
        return lengths

    def take(self, rows: Sequence[int]) -> np.ndarray:
        """int32 [len(rows), max_seq_length]: the given global rows, reading only the shards that hold them."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.max_seq_length), np.int32)
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            out[where] = self._shard(int(s))[rows[where] - self._starts[s]]
        with self._lock:
            self.rows_read += len(rows)
        return out

    def _shard(self, index: int):
        with self._lock:
            return self._open[index] if index in self._open else self._open_shard(index)

    def _open_shard(self, index: int):
        path = storage.join(self.directory, self.split, f"{self._names[index]}.npy")
        local = storage.local_path(path)
        shard = np.load(local, mmap_mode="r") if local else _RemoteShard(path)
        rows = int(self._starts[index + 1] - self._starts[index])
        if (tuple(shard.shape), shard.dtype) != ((rows, self.max_seq_length), self.dtype):
            raise _damaged(self.directory, self.split, self._names[index],
                           f"{self.split}/{self._names[index]}.npy holds {shard.dtype} {tuple(shard.shape)}, "
                           f"{MANIFEST} lists {self.dtype} {(rows, self.max_seq_length)}")
        self._open[index] = shard
        self.shards_opened.add(self._names[index])
        return self._open[index]


class _RemoteShard:
    """A `.npy` shard in a bucket read row by row: `shard[local_rows]` fetches only those rows."""

    def __init__(self, path: str):
        self.path = path
        with storage.open_file(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read_header(f)
            self.offset = f.tell()

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        row_bytes = self.shape[1] * self.dtype.itemsize
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        with storage.open_file(self.path, "rb") as f:
            for i, r in enumerate(rows):
                f.seek(self.offset + int(r) * row_bytes)
                out[i] = np.frombuffer(f.read(row_bytes), self.dtype)
        return out
