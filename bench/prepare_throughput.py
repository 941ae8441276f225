"""Prepare throughput (tokenize + pack to shards, `roberta_jax.data.prepare` on Dask) against HF run_mlm's recipe
(`datasets.map` tokenize + `group_texts`) on the same text, and the prepared-data loader's rows/s per host.

    python bench/prepare_throughput.py --mb 200 --workers 1 2 --piece-mb 8

The text is ../shared/data/corpus's files joined by blank lines and repeated to `--mb` megabytes, in one file;
the tokenizer is roberta-base's BPE from ../shared/data/roberta-base. Every process uses one tokenizer thread
(RAYON_NUM_THREADS=1), so N workers or N `num_proc` are N cores. Nothing is cached between runs.
The loader is timed on the last prepared directory: host 0 of `--hosts` reading its share of global batches
of `--batch-size` rows with read-ahead, against the rows/s one H100 consumes at `--step-tokens-per-sec`.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before `tokenizers` starts its thread pool

import argparse  # noqa: E402
import itertools  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpus_file(directory: pathlib.Path, megabytes: float) -> pathlib.Path:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((SHARED / "corpus").iterdir()) if p.is_file())
    copies = max(1, round(megabytes * 1e6 / len(text.encode())))
    path = directory / "corpus.txt"
    path.write_text("\n\n".join([text] * copies), encoding="utf-8")
    return path


def ours(path, tokenizer, out, workers, max_seq_length, piece_bytes) -> dict:
    from roberta_jax.data import prepare

    start = time.perf_counter()
    manifest = prepare.prepare(str(path), tokenizer, str(out), vocab_size=len(tokenizer), num_workers=workers,
                               max_seq_length=max_seq_length, piece_bytes=piece_bytes, progress=False)
    return {"seconds": time.perf_counter() - start, "tokens": manifest["stats"]["train/tokens"],
            "rows": manifest["stats"]["train/rows"]}


def hf_run_mlm(path, cache_dir, num_proc, max_seq_length) -> dict:
    """transformers' examples/pytorch/language-modeling/run_mlm.py without --line_by_line."""
    import datasets
    import transformers

    tokenizer = transformers.RobertaTokenizerFast(str(SHARED / "roberta-base" / "vocab.json"),
                                                  str(SHARED / "roberta-base" / "merges.txt"))
    start = time.perf_counter()
    raw = datasets.load_dataset("text", data_files=str(path), cache_dir=str(cache_dir))["train"]

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]]) // max_seq_length * max_seq_length
        return {k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    seconds = time.perf_counter() - start
    tokens = sum(len(x) for x in tokenized.data.column("input_ids").to_pylist())
    return {"seconds": seconds, "tokens": tokens, "rows": len(grouped)}


def loader(prepared, batch_size, hosts, batches) -> float:
    """Rows/s host 0 of `hosts` gets from `BatchIterator` over the prepared shards (read-ahead 4)."""
    from roberta_jax.data.batches import BatchIterator
    from roberta_jax.data.shards import ShardedRows

    it = BatchIterator(ShardedRows(prepared), batch_size, seed=0, process_index=0, process_count=hosts, read_ahead=4)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * it.local_batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="megabytes of text")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--piece-mb", type=float, default=8.0, help="MiB of text per shard")
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch (rows) for the loader")
    parser.add_argument("--hosts", type=int, default=8, help="hosts sharing the global batch")
    parser.add_argument("--batches", type=int, default=20, help="batches to time the loader on")
    parser.add_argument("--step-tokens-per-sec", type=float, default=565_000, help="one H100's base-model rate")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "corpus").is_dir() or not (SHARED / "roberta-base" / "merges.txt").exists():
        sys.exit(f"needs {SHARED / 'corpus'} and the roberta-base BPE in {SHARED / 'roberta-base'}; not found.")

    from roberta_jax.data.tokenizer import RobertaTokenizer

    vocab = SHARED / "roberta-base"
    tokenizer = RobertaTokenizer.from_files(vocab / "vocab.json", vocab / "merges.txt")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        path = corpus_file(scratch, args.mb)
        megabytes = path.stat().st_size / 1e6
        print(f"text: {megabytes:.1f} MB in {path}")
        for n in args.workers:
            r = ours(path, tokenizer, scratch / f"prepared-{n}", n, args.max_seq_length, round(args.piece_mb * 2**20))
            print(f"prepare (Dask, {n} worker(s)): {r['seconds']:.1f} s, {megabytes / r['seconds']:.2f} MB/s, "
                  f"{r['tokens'] / r['seconds']:,.0f} tokens/s, {r['rows']:,} rows")
            if not args.skip_hf:
                h = hf_run_mlm(path, scratch / f"hf-{n}", n, args.max_seq_length)
                print(f"HF run_mlm (datasets.map num_proc={n}): {h['seconds']:.1f} s, "
                      f"{megabytes / h['seconds']:.2f} MB/s, {h['tokens'] / h['seconds']:,.0f} tokens/s "
                      f"(<s></s> per line included), {h['rows']:,} rows")
        rate = loader(scratch / f"prepared-{args.workers[-1]}", args.batch_size, args.hosts, args.batches)
        needed = args.step_tokens_per_sec / args.max_seq_length
        print(f"loader: {rate:,.0f} rows/s per host (host 0 of {args.hosts}, global batch {args.batch_size}); one "
              f"H100 consumes {needed:,.0f} rows/s at {args.step_tokens_per_sec:,.0f} tokens/s: {rate / needed:.0f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
