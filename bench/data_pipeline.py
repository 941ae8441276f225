"""Data pipeline throughput: tokenize + pack (tokens/s) and per-batch iterator cost vs a step time.

    python bench/data_pipeline.py                      # num_proc 1 and 2, batch 8x512
    python bench/data_pipeline.py --step-time-ms 250 --copies 8

Reads the real text under ../shared/data/corpus (relative to the repo root) with the
roberta-base byte-level BPE from ../shared/data/roberta-base; exits with a message if absent.
The corpus is written `--copies` times to a scratch directory so the timed work is a few
seconds long. Every tokenize run starts from an empty cache; a cached re-run is timed too.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from roberta_jax.data.batches import BatchIterator, build_pretraining_data, to_global
from roberta_jax.train import sharding
from roberta_jax.train.config import default_config

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def roberta_bpe(directory: pathlib.Path) -> Tokenizer:
    tok = Tokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-time-ms", type=float, default=100.0, help="train step time to compare with")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--copies", type=int, default=4, help="copies of the corpus to tokenize")
    parser.add_argument("--doc-split", default="line", choices=("blank_line", "line", "file"))
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=500, help="batches to time")
    args = parser.parse_args()

    corpus_dir, vocab_dir = SHARED / "corpus", SHARED / "roberta-base"
    if not corpus_dir.is_dir() or not (vocab_dir / "merges.txt").exists():
        sys.exit(f"needs real text in {corpus_dir} and the roberta-base BPE in {vocab_dir}; not found.")
    tokenizer = roberta_bpe(vocab_dir)
    files = sorted(p for p in corpus_dir.iterdir() if p.is_file())

    scratch = tempfile.mkdtemp(prefix="bench_data_")
    try:
        for i in range(args.copies):
            for p in files:
                shutil.copy(p, os.path.join(scratch, f"{i}-{p.name}"))
        text_bytes = sum(p.stat().st_size for p in files) * args.copies
        print(
            f"corpus: {len(files)} files x {args.copies} copies = {text_bytes / 1e6:.1f} MB, "
            f"doc_split={args.doc_split}, L={args.max_seq_length}, {os.cpu_count()} CPUs"
        )

        texts = [line for p in files for line in p.read_text(encoding="utf-8").split("\n") if line.strip()]
        start = time.perf_counter()
        raw_tokens = sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts * args.copies, add_special_tokens=False))
        seconds = time.perf_counter() - start
        print(f"tokenizer alone (encode_batch_fast, lines): {raw_tokens / seconds / 1e6:.2f} M tokens/s")

        def build(cache_dir: str, num_proc: int):
            start = time.perf_counter()
            data = build_pretraining_data(
                os.path.join(scratch, "*"),
                tokenizer,
                max_seq_length=args.max_seq_length,
                doc_split=args.doc_split,
                num_proc=num_proc,
                cache_dir=cache_dir,
            )
            return data, time.perf_counter() - start

        for num_proc in args.num_proc:
            cache_dir = tempfile.mkdtemp(prefix="bench_data_cache_")  # empty: tokenizes for real
            data, seconds = build(cache_dir, num_proc)
            tokens = data.stats["train/tokens"]
            _, cached_seconds = build(cache_dir, num_proc)
            shutil.rmtree(cache_dir, ignore_errors=True)
            print(
                f"tokenize+pack num_proc={num_proc}: {tokens:,} tokens in {seconds:.2f} s = "
                f"{tokens / seconds / 1e6:.2f} M tokens/s ({text_bytes / seconds / 1e6:.1f} MB/s); "
                f"cached re-run {cached_seconds:.2f} s"
            )

        rows = data.train
        iterator = BatchIterator(rows, args.batch_size, seed=0)
        next(iterator)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        host_ms = (time.perf_counter() - start) / args.batches * 1e3

        # The batch placed as `train.runtime.Runtime.put` places it: the default mesh and logical-axis rules.
        config = default_config()
        mesh = sharding.make_mesh(dict(config.mesh))
        batch_axes = sharding.batch_axes(sharding.axis_rules(config.logical_axis_rules))
        jax.block_until_ready(to_global(next(iterator), mesh, batch_axes))
        start = time.perf_counter()
        for _ in range(args.batches):
            jax.block_until_ready(to_global(next(iterator), mesh, batch_axes))
        total_ms = (time.perf_counter() - start) / args.batches * 1e3
        print(
            f"batch {args.batch_size}x{args.max_seq_length} from {rows.num_rows:,} rows: iterator {host_ms:.3f} ms, "
            f"iterator + to_global ({jax.device_count()} x {jax.devices()[0].platform}) {total_ms:.3f} ms "
            f"= {total_ms / args.step_time_ms:.2%} of a {args.step_time_ms:g} ms step"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
