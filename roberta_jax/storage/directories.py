"""Directories on storage: written file by file and marked `INCOMPLETE` until their last file (`put_dir`,
`staged_dir`, `local_dir`; readers call `check_whole`), local copies for libraries that read only local files
(`local_copy`), the files a source names (`find`, `glob_files`), versions for cache keys (`file_info`), and
local caches standing for remote paths (`local_cache_dir`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Iterator

from roberta_jax.storage.files import (
    INCOMPLETE,
    StorageError,
    _gcs,
    _key,
    check_access,
    copy_file,
    exists,
    is_remote,
    isdir,
    join,
    makedirs,
    name,
    remove,
    rmtree,
    write_bytes,
)


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


def cache_root() -> str:
    """This host's local cache of the package: `$ROBERTA_JAX_CACHE`, else `$XDG_CACHE_HOME/roberta_jax`, else
    `~/.cache/roberta_jax`."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("ROBERTA_JAX_CACHE") or os.path.join(xdg, "roberta_jax")


def local_cache_dir(path: str, kind: str) -> str:
    """A local directory standing for `path`'s `kind` (e.g. "data_cache"): `path/kind` when `path` is local;
    for a remote `path`, `cache_root()/kind/<bucket>-<hash of path>`, since memory-mapped caches need a local
    disk."""
    if not is_remote(path):
        return join(path, kind)
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return os.path.join(cache_root(), kind, f"{_key(path).split('/', 1)[0]}-{digest}")


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
    return sorted(file_sizes(directory))


def file_sizes(directory: str) -> dict[str, int]:
    """{path: size in bytes} of every file `find(directory)` lists, from the same one listing."""
    if is_remote(directory):
        root = _key(directory)
        found = _gcs().find(root, detail=True)
        return {f"gs://{p}": int(info["size"]) for p, info in found.items()
                if not _hidden(p[len(root) + 1:].split("/"))}
    found = {}
    for top, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith("."):
                path = os.path.join(top, n)
                found[path] = os.path.getsize(path)
    return found


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
