"""Logs on storage without append: `AppendLog` writes lines durably at each flush (a local file appended to,
or one object per flush on `gs://`) and `read_lines` reads either back in order."""

from __future__ import annotations

from roberta_jax.storage.files import is_remote, isfile, join, listdir, read_text, remove, write_text


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
