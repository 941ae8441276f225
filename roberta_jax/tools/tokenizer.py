"""Command line for the tokenizer: train byte-level BPE (RoBERTa) or a unigram SentencePiece vocabulary (XLM-R)
on text files and save it for HF and `roberta_jax.data.tokenizer.load_tokenizer`.

python -m roberta_jax.tools.tokenizer train --files a.txt b.txt --vocab-size 50265 --min-frequency 2 --out DIR
python -m roberta_jax.tools.tokenizer train --kind unigram --files ko.txt --vocab-size 8000 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from roberta_jax.data.tokenizer import KINDS, train_tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m roberta_jax.tools.tokenizer train [--kind unigram] --files a.txt --vocab-size N --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m roberta_jax.tools.tokenizer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on UTF-8 text files and save it to --out")
    train.add_argument("--kind", choices=KINDS, default="byte_level_bpe",
                       help="byte_level_bpe (RoBERTa's vocab.json + merges.txt) or unigram (XLM-R's SentencePiece)")
    train.add_argument("--files", nargs="+", required=True, help="UTF-8 text files")
    train.add_argument("--vocab-size", type=int, default=50265, help="ids in all, <mask> (the last) included")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="byte_level_bpe: least count of a pair for it to be merged")
    train.add_argument("--out", required=True, help="directory for tokenizer.json, tokenizer_config.json, ...")
    args = parser.parse_args(argv)
    try:
        tok = train_tokenizer(args.files, args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    tok.save(args.out)
    print(f"{args.out}: {tok.vocab_size} tokens, <pad> = {tok.pad_token_id}, <mask> = {tok.mask_token_id}")


if __name__ == "__main__":
    main()
