"""The persistent compilation cache: which directory a setting names, and a second process loading what the first
compiled (on the CPU too, however small the program)."""

import os
import subprocess
import sys

import pytest

from roberta_jax.train import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small program compiled with the cache of argv[1]; prints the cache's hits and misses.
COMPILE = """
import sys

import jax
import jax.numpy as jnp

from roberta_jax.train import compilation_cache

events = []
jax.monitoring.register_event_listener(lambda name, **_: events.append(name))
compilation_cache.enable(sys.argv[1])
jax.jit(lambda x: jnp.tanh(x) * 2 + 1)(jnp.arange(3.0)).block_until_ready()
print(*(events.count(f"/jax/compilation_cache/cache_{kind}") for kind in ("hits", "misses")))
"""


def test_the_setting_names_a_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.cache_dir("") == str(tmp_path / "roberta_jax" / "jax_compilation_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    assert compilation_cache.cache_dir("") == "/elsewhere"
    assert compilation_cache.cache_dir("none") is None and compilation_cache.cache_dir("None") is None
    monkeypatch.chdir(tmp_path)
    assert compilation_cache.cache_dir("jit") == str(tmp_path / "jit")
    assert compilation_cache.cache_dir("~/jit") == os.path.join(os.path.expanduser("~"), "jit")


def test_a_bucket_path_stays_a_url():
    pytest.importorskip("gcsfs", reason="gs:// needs the [gcs] extra")
    assert compilation_cache.cache_dir("gs://bucket/jit/") == "gs://bucket/jit"


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    def compile_once() -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", COMPILE, str(tmp_path / "jit")], capture_output=True, text=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO), timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        hits, misses = out.stdout.split()[-2:]
        return int(hits), int(misses)

    hits, misses = compile_once()
    assert hits == 0 and misses > 0
    assert len(os.listdir(tmp_path / "jit")) == misses  # each written, though compiled in milliseconds
    assert compile_once() == (misses, 0)
