"""Tokenizer throughput, tokens/s: `RobertaTokenizer.encode_batch` beside HF `RobertaTokenizerFast`.

Encodes every non-empty line of the corpora in ../shared/data/corpus (relative to the repo root) in
batches, with the roberta-base vocabulary from tests/data, and prints the median of several repeats for
each thread count. Rayon reads RAYON_NUM_THREADS once, when its pool starts, so each thread count runs
in its own subprocess.

    PYTHONPATH=. python bench/tokenizer_throughput.py --threads 1 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO.parent / "shared" / "data" / "corpus"
VOCAB_DIR = REPO / "tests" / "data" / "roberta-base"


def _load_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _median_seconds(
    encoders: dict[str, Callable[[list[str]], object]], batches: list[list[str]], repeats: int
) -> dict[str, float]:
    """Median wall time of each encoder over all `batches`, after one untimed warm-up pass; the encoders take
    turns within each repeat, so that load from other processes falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats + 1):
        for name, encode in encoders.items():
            start = time.perf_counter()
            for batch in batches:
                encode(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def worker(batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Tokens/s of ours and HF's per corpus file, in this process's rayon pool."""
    from roberta_jax.data.tokenizer import RobertaTokenizer

    ours = RobertaTokenizer.from_files(VOCAB_DIR / "vocab.json", VOCAB_DIR / "merges.txt")
    try:
        import transformers

        hf = transformers.RobertaTokenizerFast.from_pretrained(VOCAB_DIR)
    except ImportError:
        hf = None
    results = {}
    for path in sorted(CORPUS_DIR.glob("*")):
        lines = _load_lines(path)
        batches = [lines[i : i + batch_size] for i in range(0, len(lines), batch_size)]
        tokens = sum(len(ids) for batch in batches for ids in ours.encode_batch(batch)["input_ids"])
        encoders = {"ours": ours.encode_batch} if hf is None else {"ours": ours.encode_batch, "hf": hf}
        seconds = _median_seconds(encoders, batches, repeats)
        results[path.name] = {"lines": len(lines), "tokens": tokens, **{k: tokens / t for k, t in seconds.items()}}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="rayon thread counts to measure")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the corpus; the median is shown")
    parser.add_argument("--batch-size", type=int, default=1024, help="lines per encode_batch call")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.batch_size, args.repeats)))
        return
    if not CORPUS_DIR.is_dir():
        print(f"skipped: no corpus at {CORPUS_DIR} (the shared data folder beside the repo)")
        return
    load = os.getloadavg()[0]  # other processes on the machine skew the timings, the 2-thread ones most
    print(f"corpus: {CORPUS_DIR}, batch size {args.batch_size}, median of {args.repeats}")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} before the run")
    print(f"{'file':<26}{'lines':>8}{'tokens':>10}{'threads':>9}{'ours tok/s':>13}{'HF tok/s':>13}{'ours/HF':>9}")
    for threads in args.threads:
        env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        for name, row in json.loads(out.splitlines()[-1]).items():
            hf = f"{row['hf']:>13,.0f}{row['ours'] / row['hf']:>9.2f}" if "hf" in row else f"{'-':>13}{'-':>9}"
            print(f"{name:<26}{row['lines']:>8,}{row['tokens']:>10,}{threads:>9}{row['ours']:>13,.0f}{hf}")


if __name__ == "__main__":
    main()
