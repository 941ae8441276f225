"""JAX's persistent compilation cache, so a restarted run (a preempted job, a resumed sweep) loads its compiled
steps instead of compiling them again.

`compilation_cache_dir`, a runtime config field (`train.config.add_runtime_fields`):

    ""        $JAX_COMPILATION_CACHE_DIR where it is set, else `default_dir()`: ~/.cache/roberta_jax/
              jax_compilation_cache (`storage.cache_root()` moves it), on each host's own disk
    "none"    no persistent cache
    a path    local, or gs://bucket/path (read and written through etils.epath, as Orbax does)

Local by default, not in the workdir: the workdir of a pod run is a bucket, where every entry costs a round
trip per host per program, while a local disk answers in milliseconds; one cache also serves every workdir
(a sweep's runs compile their shared shapes once). Where the VMs themselves are replaced on preemption
(their disks with them), point it at a bucket instead.

Every program is cached, however small or quick to compile: JAX's defaults leave out programs that compile in
under a second, which on a CPU are nearly all of them (and the evaluation step anywhere).
"""

from __future__ import annotations

import logging
import os

import jax

from roberta_jax import storage

log = logging.getLogger("absl")

DISABLED = "none"


def default_dir() -> str:
    """The per-user local cache: `storage.cache_root()` / jax_compilation_cache."""
    return os.path.join(storage.cache_root(), "jax_compilation_cache")


def cache_dir(setting: str) -> str | None:
    """The directory `compilation_cache_dir` = `setting` names (module docstring); None for "none"."""
    if setting.strip().lower() == DISABLED:
        return None
    return storage.resolve(os.path.expanduser(setting) if setting else
                           os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir())


def enable(setting: str) -> str | None:
    """Points JAX's persistent compilation cache at `cache_dir(setting)` for every program compiled from now
    on, whatever its size and compile time; returns the directory (None: left off)."""
    path = cache_dir(setting)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    log.info("compilation cache: %s", path)
    return path
