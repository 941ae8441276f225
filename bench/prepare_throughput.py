"""Prepare throughput (read + tokenize + pack to shards, `roberta_jax.data.prepare` on Dask) for plain text,
JSON lines (.gz) and Parquet, against HF run_mlm's recipe (`datasets.map` tokenize + `group_texts`) on the same
documents, the peak memory of one worker on a large input, and the prepared-data loader's rows/s per host.

    nice -n 10 python bench/prepare_throughput.py --mb 20 --workers 1 2 --piece-mb 4 --rss-gb 2

The documents are ../shared/data/corpus/wikitext2-test.raw's lines (paragraphs) repeated to `--mb` megabytes:
one text file (blank-line separated), the same records in 4 .jsonl.gz files (field "text"; one piece each) and in
one Parquet file (row groups of `--piece-mb`). The tokenizer is roberta-base's BPE from ../shared/data/roberta-base.
Every process uses one tokenizer thread (RAYON_NUM_THREADS=1), so N workers or N `num_proc` are N cores.
Nothing is cached between runs. `--rss-gb G` writes a G-GB text file and Parquet file and runs the first two
pieces of each in a fresh process, printing its peak RSS (`resource.getrusage`): bounded by the piece, not the
file. The loader is timed on the text run's prepared directory: host 0 of `--hosts` reading its share of
global batches of `--batch-size` rows with read-ahead, against the rows/s one H100 consumes at
`--step-tokens-per-sec`. Generated inputs are deleted at the end.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before `tokenizers` starts its thread pool

import argparse  # noqa: E402
import gzip  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
WIKITEXT = SHARED / "corpus" / "wikitext2-test.raw"
FORMATS = {"text": "corpus.txt", "jsonl.gz": "jsonl", "parquet": "corpus.parquet"}
GZ_PARTS = 4  # .jsonl.gz files are read whole, one piece each: a corpus of them (C4: 1,024) spreads by file


def documents() -> list[str]:
    """WikiText-2's non-blank lines (its paragraphs: the file has no blank lines between them)."""
    return [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_inputs(directory: pathlib.Path, megabytes: float, formats, row_group_mb: float) -> dict[str, pathlib.Path]:
    """The documents repeated to `megabytes` of text, written in each of `formats` (a file each, a directory of
    `GZ_PARTS` files for jsonl.gz), streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents()
    one_copy = sum(len(d.encode()) + 2 for d in docs)
    copies = max(1, round(megabytes * 1e6 / one_copy))
    per_group = max(1, round(row_group_mb * 1e6 / (one_copy / len(docs))))
    paths = {f: directory / FORMATS[f] for f in formats}
    if "text" in paths:
        with open(paths["text"], "w", encoding="utf-8") as f:
            for _ in range(copies):
                f.write("\n\n".join(docs) + "\n\n")
    if "jsonl.gz" in paths:
        lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
        paths["jsonl.gz"].mkdir()
        for part in range(GZ_PARTS):
            with gzip.open(paths["jsonl.gz"] / f"part-{part}.jsonl.gz", "wb", compresslevel=1) as f:
                for _ in range(part, copies, GZ_PARTS):
                    f.write(lines)
    if "parquet" in paths:
        schema = pa.schema({"text": pa.string()})
        # Uncompressed, no dictionary: the file is as large as its text (a --rss-gb file is that many GB).
        with pq.ParquetWriter(paths["parquet"], schema, compression="none", use_dictionary=False) as writer:
            stream = itertools.chain.from_iterable(itertools.repeat(docs, copies))
            while group := list(itertools.islice(stream, per_group)):
                writer.write_table(pa.table({"text": group}, schema=schema), row_group_size=per_group)
    return paths


def ours(path, tokenizer, out, workers, max_seq_length, piece_bytes) -> dict:
    from roberta_jax.data import prepare

    start = time.perf_counter()
    manifest = prepare.prepare(str(path), tokenizer, str(out), vocab_size=len(tokenizer), num_workers=workers,
                               max_seq_length=max_seq_length, piece_bytes=piece_bytes, progress=False)
    return {"seconds": time.perf_counter() - start, "tokens": manifest["stats"]["train/tokens"],
            "rows": manifest["stats"]["train/rows"]}


def hf_run_mlm(path, cache_dir, num_proc, max_seq_length) -> dict:
    """transformers' examples/pytorch/language-modeling/run_mlm.py without --line_by_line (its loader by the
    file's extension: "text" reads a row per line, "json" and "parquet" a row per record)."""
    import datasets
    import transformers

    tokenizer = transformers.RobertaTokenizerFast(str(SHARED / "roberta-base" / "vocab.json"),
                                                  str(SHARED / "roberta-base" / "merges.txt"))
    start = time.perf_counter()
    builder = {".txt": "text", "": "json", ".parquet": "parquet"}[path.suffix]
    files = sorted(map(str, path.iterdir())) if path.is_dir() else str(path)
    raw = datasets.load_dataset(builder, data_files=files, cache_dir=str(cache_dir))["train"]

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=raw.column_names)

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


def first_pieces_rss(path, tokenizer, out, max_seq_length, piece_bytes, pieces=2) -> tuple[tuple, int]:
    """((peak RSS in MiB before the pieces, after them), pieces planned): `prepare_piece` of the first
    `pieces` pieces of `path` in a fresh process, as one Dask worker runs them."""
    from roberta_jax.data import prepare, readers
    from roberta_jax.data.encoders import resolve_tokenizer

    shards = prepare.plan_shards(readers.resolve(str(path), readers.Reading()), "train", readers.Reading(),
                                 piece_bytes)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rss = pool.apply(_run_pieces, (shards[:pieces], resolve_tokenizer(tokenizer), str(out), max_seq_length))
    return rss, len(shards)


def _run_pieces(shards, tok, out, max_seq_length) -> tuple[float, float]:
    """(peak RSS in MiB before the first piece, i.e. imports and tokenizer; after the pieces)."""
    import resource

    from roberta_jax.data import prepare

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for shard in shards:
        prepare.prepare_piece(shard, tok, out, max_seq_length, "uint16")
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    global SHARED, WIKITEXT  # --data moves every input
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="megabytes of text")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--piece-mb", type=float, default=8.0, help="MiB of text per piece (Parquet: per row group)")
    parser.add_argument("--rss-gb", type=float, default=0.0, help="peak RSS of a worker on inputs of this size")
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch (rows) for the loader")
    parser.add_argument("--hosts", type=int, default=8, help="hosts sharing the global batch")
    parser.add_argument("--batches", type=int, default=20, help="batches to time the loader on")
    parser.add_argument("--step-tokens-per-sec", type=float, default=565_000, help="one H100's base-model rate")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--data", type=pathlib.Path, default=SHARED, help="../shared/data elsewhere")
    args = parser.parse_args()
    SHARED, WIKITEXT = args.data, args.data / WIKITEXT.relative_to(SHARED)
    if not WIKITEXT.exists() or not (SHARED / "roberta-base" / "merges.txt").exists():
        sys.exit(f"needs {WIKITEXT} and the roberta-base BPE in {SHARED / 'roberta-base'}; not found.")

    from roberta_jax.data.tokenizer import RobertaTokenizer

    vocab = SHARED / "roberta-base"
    tokenizer = RobertaTokenizer.from_files(vocab / "vocab.json", vocab / "merges.txt")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    piece_bytes = round(args.piece_mb * 2**20)
    try:
        paths = write_inputs(scratch, args.mb, args.formats, args.piece_mb * 2**20 / 1e6)
        for fmt, path in paths.items():
            size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
            print(f"{fmt}: {size / 1e6:.1f} MB in {path.name}")
            for n in args.workers:
                r = ours(path, tokenizer, scratch / f"prepared-{fmt}-{n}", n, args.max_seq_length, piece_bytes)
                print(f"  prepare (Dask, {n} worker(s)): {r['seconds']:.1f} s, {r['tokens'] / r['seconds']:,.0f} "
                      f"tokens/s, {r['rows']:,} rows")
                if not args.skip_hf:
                    h = hf_run_mlm(path, scratch / f"hf-{fmt}-{n}", n, args.max_seq_length)
                    print(f"  HF run_mlm (datasets.map num_proc={n}): {h['seconds']:.1f} s, "
                          f"{h['tokens'] / h['seconds']:,.0f} tokens/s (<s></s> per row included), {h['rows']:,} rows")
        if args.rss_gb:
            big = scratch / "big"
            big.mkdir()
            for fmt, path in write_inputs(big, args.rss_gb * 1000, ["text", "parquet"], args.piece_mb).items():
                rss, pieces = first_pieces_rss(path, tokenizer, big / f"prepared-{fmt}", args.max_seq_length,
                                               piece_bytes)
                print(f"peak RSS of a worker after 2 of the {pieces} pieces of a {path.stat().st_size / 1e9:.2f} GB "
                      f"{fmt} file: {rss[1]:,.0f} MiB ({rss[0]:,.0f} MiB before the first: imports, tokenizer)")
                path.unlink()
        if "text" in paths:
            rate = loader(scratch / f"prepared-text-{args.workers[-1]}", args.batch_size, args.hosts, args.batches)
            needed = args.step_tokens_per_sec / args.max_seq_length
            print(f"loader: {rate:,.0f} rows/s per host (host 0 of {args.hosts}, global batch {args.batch_size}); "
                  f"one H100 consumes {needed:,.0f} rows/s at {args.step_tokens_per_sec:,.0f} tokens/s: "
                  f"{rate / needed:.0f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
