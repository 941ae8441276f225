"""Paths local or on object storage (`gs://`): the one layer every user path goes through.

    storage.resolve("runs/x")                  # "/abs/runs/x"; "gs://bkt/run" stays as it is
    storage.write_json("gs://bkt/run/workdir.json", {...})   # whole or not at all
    storage.create_exclusive("gs://bkt/run/run.lock", data)  # False when it exists (a generation precondition)
    with storage.local_copy("gs://bkt/run/hf") as d: ...      # a local copy for libraries that need files

Object storage is not a filesystem: no atomic rename, no append, no lock, listings that may lag. So what
must be atomic is made so here: a file is written whole (locally under a temporary name then renamed; on
`gs://` one object upload, which appears whole or not at all); exclusive creation is a create-if-absent
precondition; a directory written file by file (an HF export) carries `INCOMPLETE` from its first file to
its last, and a reader refuses it until then (`check_whole`). Local paths go through `os` exactly as before.

Remote paths are `etils.epath` paths (Orbax's layer; gcsfs underneath). Without the GCS libraries a
`gs://` path fails with the extra to install; a path such as `gs:/bkt/x` (one slash) is an error, never a
local directory named `gs:`. This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

REMOTE_PREFIXES = ("gs://",)
INCOMPLETE = ".incomplete"  # inside a directory being written file by file; removed after its last file
INSTALL_HINT = "pip install 'roberta_jax[gcs]' (gcsfs and google-cloud-storage)"


class StorageError(OSError):
    """A path that cannot be used: the GCS libraries missing, a bucket unreachable or not permitted, a
    malformed URL, a half-written directory. The message names the path."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is on object storage (`gs://…`)."""
    return str(path).startswith(REMOTE_PREFIXES)


def resolve(path: str | os.PathLike) -> str:
    """`path` as the package keeps it: a `gs://` URL unchanged (without a trailing slash), a local path
    absolute. A scheme with one slash (`gs:/bkt`) or an unsupported one (`s3://`) is a `StorageError`."""
    text = os.fspath(path)
    if is_remote(text):
        require_gcs(text)
        return text.rstrip("/")
    scheme = text.split(":", 1)[0] if ":" in text.split("/", 1)[0] else ""
    if scheme == "gs":
        raise StorageError(f"{text}: a bucket path is written gs://bucket/path (two slashes)")
    if scheme:
        raise StorageError(f"{text}: {scheme}: paths are not supported; use a local path or gs://bucket/path")
    return os.path.abspath(text)


def join(path: str, *names: str) -> str:
    """`path/name/...`, for local paths and URLs alike."""
    return os.path.join(path, *names)


def name(path: str) -> str:
    """The last component of `path`."""
    return os.path.basename(str(path).rstrip("/"))


def parent(path: str) -> str:
    return os.path.dirname(str(path).rstrip("/"))


@functools.cache
def require_gcs(path: str = "gs://") -> None:
    """Raises `StorageError` naming the install extra when the GCS libraries are missing."""
    # gcsfs first asks a bucket's type over gRPC, which times out (60 s) where there is none: an emulator.
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import gcsfs  # noqa: F401 - epath reaches gs:// through it
        from etils import epath  # noqa: F401
    except ImportError as err:
        raise StorageError(f"{path}: reading and writing gs:// needs the GCS libraries ({err.name} is missing): "
                           f"{INSTALL_HINT}") from None


def epath_of(path: str):
    """`etils.epath.Path(path)`, for code that streams from files local or remote."""
    from etils import epath

    if is_remote(path):
        require_gcs(str(path))
    return epath.Path(path)


# -- reading ------------------------------------------------------------------------------------------------


def exists(path: str) -> bool:
    return _gcs().exists(_key(path)) if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
    return _gcs().isfile(_key(path)) if is_remote(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
    return _gcs().isdir(_key(path)) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names in directory `path`, sorted ([] when it does not exist)."""
    if not isdir(path):
        return []
    if is_remote(path):
        return sorted(name(p) for p in _gcs().ls(_key(path), detail=False) if p.rstrip("/") != _key(path))
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (`**` recursive), sorted."""
    if is_remote(pattern):
        return sorted(f"gs://{p}" for p in _gcs().glob(_key(pattern)))
    import glob as _glob

    return sorted(_glob.glob(pattern, recursive=True))


def open_file(path: str, mode: str = "r", **kwargs):
    """`open` for a local path; a streaming file object of a remote one (read, or written whole on close)."""
    if is_remote(path):
        if "a" in mode:
            raise StorageError(f"{path}: object storage has no append; write whole files")
        return epath_of(path).open(mode, **kwargs)
    return open(path, mode, **kwargs)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any | None:
    """The JSON value in `path`, or None when it is missing or not JSON (a file cut short)."""
    try:
        return json.loads(read_bytes(path))
    except (OSError, ValueError):
        return None


def size(path: str) -> int:
    return _gcs().size(_key(path)) if is_remote(path) else os.path.getsize(path)


# -- writing ------------------------------------------------------------------------------------------------


def makedirs(path: str) -> None:
    """Creates a local directory and its parents; on object storage directories are prefixes: nothing to do."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` whole or not at all: locally aside and renamed, remotely as one object."""
    if is_remote(path):
        _gcs().pipe_file(_key(path), data)
        return
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any, **kwargs) -> None:
    """`value` as JSON in `path`, whole or not at all (`kwargs`: `json.dumps`'s, e.g. indent)."""
    write_text(path, json.dumps(value, **kwargs))


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates `path` holding `data` only if nothing is there; False when something is. Locally written aside and
    hard-linked into place; on `gs://` an upload with the precondition "no generation yet"."""
    if is_remote(path):
        try:
            _gcs().pipe_file(_key(path), data, mode="create")
        except FileExistsError:
            return False
        return True
    aside = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(aside, "wb") as f:
        f.write(data)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(aside)


def remove(path: str) -> None:
    """Deletes the file `path`; nothing when it is gone already."""
    with contextlib.suppress(FileNotFoundError):
        if is_remote(path):
            _gcs().rm_file(_key(path))
        else:
            os.remove(path)


def rmtree(path: str) -> None:
    """Deletes the directory `path` and everything under it; nothing when it is gone already."""
    if is_remote(path):
        if isdir(path):
            _gcs().rm(_key(path), recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def copy_file(src: str, dst: str) -> None:
    """Copies one file, either side local or remote (remote to remote inside the store)."""
    if is_remote(src) and is_remote(dst):
        _gcs().copy(_key(src), _key(dst))
    elif not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
    elif is_remote(dst):
        _gcs().put_file(src, _key(dst))
    else:
        _gcs().get_file(_key(src), dst)


def move(src: str, dst: str) -> None:
    """Renames `src` to `dst`: atomic locally; on object storage a copy then a delete, file by file."""
    if is_remote(src):
        fs = _gcs()
        fs.copy(_key(src), _key(dst), recursive=fs.isdir(_key(src)))
        fs.rm(_key(src), recursive=True)
    else:
        os.replace(src, dst)


# -- logs -------------------------------------------------------------------------------------------------


class AppendLog:
    """Lines added to the log `path` and made durable at each `flush`: locally appended to the file `path`;
    on object storage, which has no append, one whole object per flush, `path.d/00000042` (numbered on from
    the newest there). `read_lines(path)` reads either back in order.

    `keep(line) -> bool`: when given, the log is first rewritten without the lines it rejects (a resumed run
    drops what it will log again): locally the file whole, remotely each object that held a rejected line."""

    def __init__(self, path: str, keep=None):
        self.path, self._remote, self._buffer = path, is_remote(path), []
        if keep is not None:
            _filter_log(path, keep)
        if self._remote:
            parts = [int(n) for n in listdir(f"{path}.d") if n.isdigit()]
            self._next = max(parts, default=-1) + 1
        else:
            self._file = open(path, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        """Adds `line` (with its newline)."""
        if self._remote:
            self._buffer.append(line)
        else:
            self._file.write(line)

    def flush(self) -> None:
        if not self._remote:
            self._file.flush()
        elif self._buffer:
            write_text(join(f"{self.path}.d", f"{self._next:08d}"), "".join(self._buffer))
            self._buffer, self._next = [], self._next + 1

    def close(self) -> None:
        self.flush()
        if not self._remote:
            self._file.close()


def read_lines(path: str) -> list[str]:
    """The lines of the log `path` (`AppendLog`), in the order written; [] when there is none."""
    lines = read_text(path).splitlines(keepends=True) if isfile(path) else []
    for part in _log_parts(path):
        lines.extend(read_text(part).splitlines(keepends=True))
    return lines


def _log_parts(path: str) -> list[str]:
    return [join(f"{path}.d", n) for n in listdir(f"{path}.d") if n.isdigit()]


def _filter_log(path: str, keep) -> None:
    """Rewrites the log `path` without the lines `keep` rejects; each file or object is replaced whole."""
    for file in ([path] if isfile(path) else []) + _log_parts(path):
        lines = read_text(file).splitlines(keepends=True)
        kept = [line for line in lines if keep(line)]
        if len(kept) == len(lines):
            continue
        if kept or file == path:
            write_text(file, "".join(kept))
        else:
            remove(file)


# -- directories written file by file ------------------------------------------------------------------------


def put_dir(local_dir: str, dest: str) -> None:
    """Publishes the finished local directory `local_dir` as `dest`, replacing what was there.

    Locally it is renamed into place (the old one removed first), as atomic as a directory swap gets. On
    object storage each file is uploaded into `dest.partial/` and then copied into `dest/`; each of the two
    carries `INCOMPLETE` from before its first file until after its last, so a reader (`check_whole`) refuses
    a half-written one, and while `dest/` is being replaced the whole copy is in `dest.partial/`."""
    if not is_remote(dest):
        rmtree(dest)
        os.replace(local_dir, dest)
        return
    partial = f"{dest}.partial"
    names = sorted(os.listdir(local_dir))
    _write_marked(partial, names, lambda n: copy_file(join(local_dir, n), join(partial, n)))
    _write_marked(dest, names, lambda n: copy_file(join(partial, n), join(dest, n)))
    rmtree(partial)


@contextlib.contextmanager
def staged_dir(dest: str) -> Iterator[str]:
    """A local directory to fill with what `dest` will hold, published as `dest` (`put_dir`) when the block
    ends without an error and deleted when it raises. Locally it is `dest.partial` beside `dest` (so the swap
    is a rename), remotely a temporary directory."""
    staging = f"{dest}.partial" if not is_remote(dest) else tempfile.mkdtemp(prefix="roberta_jax-")
    rmtree(staging)
    os.makedirs(staging)
    try:
        yield staging
        put_dir(staging, dest)
    finally:
        rmtree(staging)


def local_cache_dir(path: str, kind: str) -> str:
    """A local directory standing for `path`'s `kind` (e.g. "data_cache"): `path/kind` when `path` is local;
    for a remote `path`, `~/.cache/roberta_jax/kind/<bucket>-<hash of path>` (`ROBERTA_JAX_CACHE` moves the
    root), since memory-mapped caches need a local disk."""
    if not is_remote(path):
        return join(path, kind)
    root = os.environ.get("ROBERTA_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "roberta_jax")
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return os.path.join(root, kind, f"{_key(path).split('/', 1)[0]}-{digest}")


def _write_marked(dest: str, names: list[str], put) -> None:
    rmtree(dest)
    write_bytes(join(dest, INCOMPLETE), b"")
    for file_name in names:
        put(file_name)
    remove(join(dest, INCOMPLETE))


def check_whole(directory: str) -> None:
    """Raises `StorageError` naming `directory` when it is being written (or its writer was stopped)."""
    if exists(join(directory, INCOMPLETE)):
        whole = f"{directory}.partial"
        hint = (f"; a whole copy is in {whole}" if exists(whole) and not exists(join(whole, INCOMPLETE))
                else "; rerun the command that writes it")
        raise StorageError(f"{directory} is half-written (its writer has not finished or was stopped){hint}")


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding `path` (a file or a directory): `path` itself when local, else a temporary
    download of it, deleted on exit. For libraries that read only local files (tokenizers, safetensors)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="roberta_jax-") as tmp:
        target = join(tmp, name(path))
        if isdir(path):
            check_whole(path)
            _gcs().get(_key(path) + "/", target, recursive=True)
        elif exists(path):
            _gcs().get(_key(path), target)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        yield target


def upload_dir(local_dir: str, dest: str) -> None:
    """Copies every file under `local_dir` into `dest` (local or remote), file by file."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        target = dest if rel == "." else join(dest, rel)
        makedirs(target)
        for file_name in files:
            copy_file(join(root, file_name), join(target, file_name))


# -- inputs: what a source names, versions for cache keys, local stand-ins -----------------------------------


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One version of a file, for cache keys: its size in bytes and `version`, the modification time in
    nanoseconds locally, the object's generation on `gs://` (a new one each time the object is written)."""

    size: int
    version: int | str


def file_info(path: str) -> FileInfo:
    if is_remote(path):
        found = _gcs().info(_key(path))
        return FileInfo(int(found["size"]), str(found.get("generation") or found.get("md5Hash") or found["etag"]))
    stat = os.stat(path)
    return FileInfo(stat.st_size, stat.st_mtime_ns)


def find(directory: str) -> list[str]:
    """Every file under `directory` at any depth, sorted, hidden ones left out (a name starting with ".", and
    all under such a directory). On object storage one listing of the prefix, however deep."""
    if is_remote(directory):
        root = _key(directory)
        found = (p for p in _gcs().find(root) if not _hidden(p[len(root) + 1:].split("/")))
        return sorted(f"gs://{p}" for p in found)
    found = []
    for top, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(top, n) for n in names if not n.startswith("."))
    return sorted(found)


def glob_files(pattern: str) -> list[str]:
    """The files (not directories) matching `pattern` (`**` recursive), sorted; [] when nothing matches or the
    bucket is missing. As in a local glob, a wildcard matches no hidden name."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    parts = _key(pattern).split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    try:
        found = _gcs().glob(_key(pattern), detail=True)
    except FileNotFoundError:  # no such bucket: `check_access` says so
        return []
    return sorted(f"gs://{p}" for p, meta in found.items() if meta["type"] == "file"
                  and (not _hidden(p.split("/")[fixed:]) or _hidden(parts[fixed:])))


def _hidden(parts: list[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def local_path(path: str) -> str | None:
    """`path` itself when it is on local disk, for what only a local file allows (memory-mapping it, handing it
    to a subprocess); None for a remote one, which is read through `open_file` (or `local_copy`) instead."""
    return None if is_remote(path) else path


@contextlib.contextmanager
def naming_missing(path: str) -> Iterator[None]:
    """A block that reads `path`: when it is missing, a remote `path` raises FileNotFoundError naming it (gcsfs's
    own names the object's API address), or `check_access`'s StorageError when the bucket is the trouble. A
    local path's error, which names it, passes unchanged."""
    try:
        yield
    except FileNotFoundError:
        if not is_remote(path):
            raise
        check_access(path)
        raise FileNotFoundError(f"{path}: no such file") from None


@contextlib.contextmanager
def local_dir(dest: str) -> Iterator[str]:
    """A local directory for a library that writes only local files (a tokenizer's `save`, XLA's dumps) to write
    `dest`'s files into, its other files kept: `dest` itself when local; else a temporary directory, uploaded
    into `dest` (`upload_dir`) when the block ends without an error. Either way `dest` carries `INCOMPLETE`
    from the start of the block until after its last file, so readers (`check_whole`) refuse it meanwhile,
    and after a failure. (`staged_dir` instead replaces `dest` whole.)"""
    marker = join(dest, INCOMPLETE)
    makedirs(dest)
    write_bytes(marker, b"")
    if is_remote(dest):
        with tempfile.TemporaryDirectory(prefix="roberta_jax-") as tmp:
            yield tmp
            upload_dir(tmp, dest)
    else:
        yield dest
    remove(marker)


# -- access --------------------------------------------------------------------------------------------------


def check_access(path: str, write: bool = False) -> None:
    """Fails early, naming `path`, when its bucket cannot be reached, does not exist or is not permitted
    (`write`: a probe object is written and deleted under `path`). Local paths are not checked here."""
    if not is_remote(path):
        return
    bucket = _key(path).split("/", 1)[0]
    try:
        _gcs().ls(bucket, detail=False)
        if write:
            probe = join(path, f".write-probe-{uuid.uuid4().hex[:8]}")
            write_bytes(probe, b"")
            remove(probe)
    except FileNotFoundError:
        raise StorageError(f"{path}: bucket gs://{bucket} does not exist (or is not visible to these "
                           "credentials)") from None
    except Exception as err:  # noqa: BLE001 - permissions, network, credentials: one line naming the path
        raise StorageError(f"{path}: cannot {'write' if write else 'read'} gs://{bucket}: "
                           f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}") from None


def _key(path: str) -> str:
    """`bucket/object` of `gs://bucket/object`, as gcsfs names it."""
    return str(path)[len("gs://"):].rstrip("/")


def _gcs():
    """gcsfs's filesystem (fsspec keeps one per process, the one epath uses too), its listing cache dropped:
    another host may have written since."""
    require_gcs()
    import fsspec

    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    return fs
