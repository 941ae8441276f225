"""Startup: seconds from process start to the end of the first train step, cold against a warm compilation cache.

    python bench/startup.py                          # tiny and base, 3 runs of each kind
    python bench/startup.py --configs tiny --runs 5

Each run is `train.py` in a fresh workdir, stopped as soon as its first step is done. A cold run has an empty
`compilation_cache_dir`; the warm run after it reuses what the cold one wrote (a restart after preemption).
An untimed first run builds the data cache and (tiny) the tokenizer that every timed run then shares, so the
runs differ in the compilation cache only. Prints, per run, the seconds to the end of the first step (imports,
data, the state built in its sharding, whose init program is cached too, the step compiled or loaded, then
run) and how much longer than the second step the first one took (its compilation or cache load), and the
medians.

configs/base.py runs on the CPU with rows of --base-length and batches of --base-batch (a few seconds a
step on 2 cores), the roberta-base tokenizer from tests/data and the demo corpus; configs/tiny.py as it is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `python -c WRAPPER train.py ARGS`: train.py that prints when its first two train steps are called and done, then
# exits at once (no checkpoint, no cleanup: the workdir is thrown away).
WRAPPER = """
import os, runpy, sys, time

import jax

from roberta_jax.train import runtime

train = runtime.Runtime.train


def stop_after_two_steps(self, state, train_step, *args):
    calls = []

    def timed_step(state, batch):
        calls.append(time.time())
        out = jax.block_until_ready(train_step(state, batch))
        print("STEP", calls[-1], time.time(), flush=True)
        if len(calls) == 2:
            os._exit(0)
        return out

    return train(self, state, timed_step, *args)


runtime.Runtime.train = stop_after_two_steps
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def config_args(name: str, args, shared: str) -> list[str]:
    """train.py's config and overrides for `name` ("tiny" or "base"), its data cache in `shared`."""
    common = [f"--config.data.cache_dir={shared}/data_cache", "--config.progress=False", "--config.export_hf=False"]
    if name == "tiny":
        tokenizer = os.path.join(shared, "tiny", "tokenizer")
        return [f"--config={REPO}/configs/tiny.py", *common,
                *([f"--config.tokenizer.path={tokenizer}"] if os.path.isdir(tokenizer) else [])]
    return [f"--config={REPO}/configs/base.py", *common,
            f"--config.data.train_files={REPO}/data/demo_corpus.txt",
            f"--config.tokenizer.path={REPO}/tests/data/roberta-base",
            f"--config.data.max_seq_length={args.base_length}", f"--config.batch_size={args.base_batch}"]


def first_step(config: list[str], workdir: str, cache: str) -> tuple[float, float]:
    """(seconds from process start to the end of the first train step, seconds that step took more than the
    second: its compilation or cache load) of one train.py run."""
    cmd = [sys.executable, "-c", WRAPPER, os.path.join(REPO, "train.py"), *config, f"--workdir={workdir}",
           f"--config.compilation_cache_dir={cache}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    start = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    steps = [tuple(map(float, line.split()[1:])) for line in out.stdout.splitlines() if line.startswith("STEP ")]
    if out.returncode or len(steps) != 2:
        sys.exit(f"train.py failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    (call_1, done_1), (call_2, done_2) = steps
    return done_1 - start, (done_1 - call_1) - (done_2 - call_2)


def bench(name: str, args, shared: str) -> None:
    first_step(config_args(name, args, shared), os.path.join(shared, name), "none")  # the shared data, untimed
    config = config_args(name, args, shared)
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for run in range(args.runs):
        cache = os.path.join(shared, f"{name}-cache-{run}")
        for kind in ("cold", "warm"):
            done, extra = first_step(config, os.path.join(shared, f"{name}-{run}-{kind}"), cache)
            runs[kind].append((done, extra))
            print(f"{name} run {run + 1} {kind}: first step done at {done:6.1f} s, {extra:5.1f} s of it compiling "
                  "or loading", flush=True)
    (cold, cold_extra), (warm, warm_extra) = (tuple(map(statistics.median, zip(*runs[kind]))) for kind in runs)
    print(f"{name}: median first step done at: cold {cold:.1f} s, warm {warm:.1f} s ({cold - warm:.1f} s saved); "
          f"its compiling or loading: cold {cold_extra:.1f} s, warm {warm_extra:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,base", help="comma-separated: tiny, base")
    parser.add_argument("--runs", type=int, default=3, help="cold + warm pairs per config")
    parser.add_argument("--base-length", type=int, default=64)
    parser.add_argument("--base-batch", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as shared:
        for name in args.configs.split(","):
            bench(name.strip(), args, shared)


if __name__ == "__main__":
    main()
