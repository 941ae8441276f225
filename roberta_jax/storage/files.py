"""Files local or on `gs://`: resolving a user's path, reading, writing whole or not at all, creating only if
absent, listing, deleting, copying, and checking that a bucket can be used. `roberta_jax.storage` re-exports
every public name; the package docstring says what object storage lacks and how each need is met.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import uuid
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


def _epath(path: str):
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


def open_file(path: str, mode: str = "r", **kwargs):
    """`open` for a local path; a streaming file object of a remote one (read, or written whole on close)."""
    if is_remote(path):
        if "a" in mode:
            raise StorageError(f"{path}: object storage has no append; write whole files")
        return _epath(path).open(mode, **kwargs)
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


# -- access --------------------------------------------------------------------------------------------------


def check_access(path: str, write: bool = False) -> None:
    """Fails early, naming `path`, when its bucket cannot be reached, does not exist or is not permitted
    (`write`: a probe object is written and deleted under `path`). Local paths are not checked here."""
    if not is_remote(path):
        return
    bucket = _key(path).split("/", 1)[0]
    try:
        _gcs().info(bucket)  # one small request, however many objects the bucket holds
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
