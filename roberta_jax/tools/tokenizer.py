"""Command line for the tokenizer: train byte-level BPE (RoBERTa) or a unigram SentencePiece vocabulary (XLM-R)
on a corpus and save it for HF and `roberta_jax.data.tokenizer.load_tokenizer`.

python -m roberta_jax.tools.tokenizer train --files a.txt b.txt --vocab-size 50265 --min-frequency 2 --out DIR
python -m roberta_jax.tools.tokenizer train --kind unigram --files ko.txt --vocab-size 8000 --out DIR
python -m roberta_jax.tools.tokenizer train --files 'corpus/*.jsonl' --text-field content --vocab-size 32000 --out DIR

The documents are read as training reads the corpus (`data.sources.document_texts`, what train.py trains its
tokenizer on): files, directories and globs; text, JSON lines or Parquet (`--format`, by extension when auto);
the `--text-field` of records; text files split into documents by `--doc-split` or at a `--doc-separator` line.
The files and `--out` may be local or on `gs://`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from roberta_jax.data.sources import document_texts
from roberta_jax.data.tokenizer import KINDS, train_tokenizer
from roberta_jax.train import cli


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m roberta_jax.tools.tokenizer train [--kind unigram] --files a.txt --vocab-size N --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m roberta_jax.tools.tokenizer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = cli.add_verbose(commands.add_parser("train", help="train a tokenizer on a corpus and save it to --out"))
    train.add_argument("--kind", choices=KINDS, default="byte_level_bpe",
                       help="byte_level_bpe (RoBERTa's vocab.json + merges.txt) or unigram (XLM-R's SentencePiece)")
    train.add_argument("--files", nargs="+", required=True,
                       help="files, directories or globs (as train.py's data.train_files; commas also separate)")
    train.add_argument("--format", default="auto", choices=("auto", "text", "json", "parquet"),
                       help="as data.format: auto (by extension), text, json (JSON lines) or parquet")
    train.add_argument("--text-field", default="text", help="the field of a JSON line or Parquet column with the text")
    train.add_argument("--doc-split", default="blank_line", choices=("blank_line", "line", "file"),
                       help="text files: documents end at a blank line, every line, or the file's end")
    train.add_argument("--doc-separator", default="",
                       help="text files: a line (e.g. '<|endoftext|>') between documents, instead of --doc-split")
    train.add_argument("--vocab-size", type=int, default=50265, help="ids in all, <mask> (the last) included")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="byte_level_bpe: least count of a pair for it to be merged")
    train.add_argument("--out", required=True,
                       help="directory (local or gs://) for tokenizer.json, tokenizer_config.json, ...")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, args.verbose):
        sources = [s.strip() for f in args.files for s in f.split(",") if s.strip()]
        texts = document_texts(sources, format=args.format, text_field=args.text_field, doc_split=args.doc_split,
                               doc_separator=args.doc_separator)
        tok = train_tokenizer(texts, args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
        tok.save(args.out)
    print(f"{args.out}: {tok.vocab_size} tokens, <pad> = {tok.pad_token_id}, <mask> = {tok.mask_token_id}")


if __name__ == "__main__":
    main()
