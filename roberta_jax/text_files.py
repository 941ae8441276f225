"""Input files on disk: expanding sources into files, and the checks that name a bad file by its path.

Both the tokenizer trainer and the pretraining corpus reader call these before handing files to a
library (`tokenizers`, `datasets`) whose own errors would not say which file was at fault.
"""

from __future__ import annotations

import codecs
import glob
import os
from collections.abc import Sequence

_READ_BYTES = 1 << 22


def resolve_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands files, directories (every non-hidden file under them, sorted) and globs, in order."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files = []
    for source in map(str, sources):
        if os.path.isfile(source):
            files.append(source)
        elif os.path.isdir(source):
            found = _files_under(source)
            if not found:
                raise FileNotFoundError(f"{source}: directory holds no files.")
            files.extend(found)
        else:
            matches = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(
                    f"{source}: no such file, directory or glob match "
                    "(for a Hugging Face Hub dataset pass format='hub')."
                )
            files.extend(matches)
    return files


def _files_under(directory: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, name) for name in names if not name.startswith("."))
    return sorted(found)


def check_text_file(path: str | os.PathLike) -> None:
    """Raises ValueError naming `path` if it is empty, holds only whitespace or is not UTF-8.

    Streams the file, so any size is fine; the byte offset of a bad sequence is in the message.
    """
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: file is empty.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
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
