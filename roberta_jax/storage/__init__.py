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
local directory named `gs:`. This package imports nothing else of roberta_jax: every layer may use it.
Its modules: `files` (paths, reads, whole writes, create-if-absent, access checks), `logs` (lines kept
without append), `directories` (marked directories, local copies, source listings, local caches); every
public name is here.
"""

from roberta_jax.storage.directories import (  # noqa: F401 - the package's names
    FileInfo,
    cache_root,
    check_whole,
    file_info,
    file_sizes,
    find,
    glob_files,
    local_cache_dir,
    local_copy,
    local_dir,
    local_path,
    naming_missing,
    put_dir,
    staged_dir,
    upload_dir,
)
from roberta_jax.storage.files import (  # noqa: F401 - the package's names
    INCOMPLETE,
    INSTALL_HINT,
    REMOTE_PREFIXES,
    StorageError,
    check_access,
    copy_file,
    create_exclusive,
    exists,
    is_remote,
    isdir,
    isfile,
    join,
    listdir,
    makedirs,
    move,
    name,
    open_file,
    parent,
    read_bytes,
    read_json,
    read_text,
    remove,
    require_gcs,
    resolve,
    rmtree,
    size,
    write_bytes,
    write_json,
    write_text,
)
from roberta_jax.storage.logs import (  # noqa: F401 - the package's names
    AppendLog,
    read_lines,
)
