"""Command line: convert between HF-format directories and Orbax parameter checkpoints.

    python -m roberta_jax.tools.convert from-hf HF_DIR PARAMS_DIR [--architecture RobertaForMaskedLM]
    python -m roberta_jax.tools.convert to-hf PARAMS_DIR HF_DIR

A parameter checkpoint is a directory holding `config.json` (with `architectures`) and an Orbax
`params/` tree; `to-hf` also accepts a pretraining workdir (its newest checkpoint).
Tokenizer files found beside the source are copied along. Every directory may be local or on `gs://`;
an HF directory on `gs://` carries `.incomplete` until its last file is written (`storage.local_dir`).
"""

from __future__ import annotations

import argparse

import jax
import orbax.checkpoint as ocp

from roberta_jax import storage
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES, init_params
from roberta_jax.train import checkpoint, cli
from roberta_jax.train import workdir as workdir_files

TOKENIZER_FILES = (
    "vocab.json", "merges.txt", "sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json",
)


def save_params(directory: str, model, params) -> None:
    """Writes `config.json` and the Orbax `params/` tree of `model` into `directory`."""
    directory = storage.resolve(directory)
    with storage.local_dir(directory) as local:
        model.config.replace(architectures=(hf_io.architecture_name(model),)).to_json_file(local)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(storage.join(directory, "params"), params, force=True)


def load_params(directory: str, **model_kwargs):
    """Reads a directory written by `save_params`, or a pretraining workdir (its newest
    checkpoint, architecture in `model_config.json`): returns (params, model)."""
    directory = storage.resolve(directory)
    if workdir_files.is_pretraining_workdir(directory):
        config = RobertaConfig.from_json_file(storage.join(directory, workdir_files.MODEL_CONFIG))
        params, _ = checkpoint.load_params(directory)
        return params, ARCHITECTURES["RobertaForMaskedLM"](config, **model_kwargs)
    config = RobertaConfig.from_json_file(directory)
    architecture = (config.architectures or ("RobertaForMaskedLM",))[0]
    model = ARCHITECTURES[architecture](config, **model_kwargs)
    template = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(storage.join(directory, "params"), template)
    return params, model


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copies the tokenizer files of `src` into `dst` (either local or remote); returns their names. A pretraining
    workdir's are in its `tokenizer/`."""
    for directory in (src, storage.join(src, workdir_files.TOKENIZER)):
        names = [n for n in TOKENIZER_FILES if storage.isfile(storage.join(directory, n))]
        for name in names:
            storage.copy_file(storage.join(directory, name), storage.join(dst, name))
        if names:
            return names
    return []


def from_hf(src: str, dst: str, architecture: str | None) -> list[str]:
    """HF directory `src` -> parameter checkpoint `dst`, with the tokenizer files; returns their names."""
    architecture = architecture or (RobertaConfig.from_json_file(src).architectures or (None,))[0]
    if architecture is None:
        raise ValueError(f"{src}/config.json names no architectures; pass --architecture.")
    params, model, report = hf_io.load_hf(src, architecture)
    print(f"loaded {src} as {architecture}: {report}")
    save_params(dst, model, params)
    return copy_tokenizer_files(src, dst)


def to_hf(src: str, dst: str) -> list[str]:
    """Parameter checkpoint or pretraining workdir `src` -> HF directory `dst`, with the tokenizer files."""
    params, model = load_params(src)
    with storage.local_dir(dst) as local:
        left_out = hf_io.save_hf(local, model, params)
        copied = copy_tokenizer_files(src, local)
    if left_out:  # a pair-format workdir's next-sentence head: HF's class has no such weights
        print(f"left out {len(left_out)} weights {hf_io.architecture_name(model)} has not: {', '.join(left_out)}")
    return copied


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m roberta_jax.tools.convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from_hf_cmd = cli.add_verbose(sub.add_parser("from-hf", help="HF directory -> Orbax parameter checkpoint"))
    from_hf_cmd.add_argument("src")
    from_hf_cmd.add_argument("dst")
    from_hf_cmd.add_argument("--architecture", choices=sorted(ARCHITECTURES),
                             help="head to build (default: the config's `architectures`)")
    to_hf_cmd = cli.add_verbose(sub.add_parser("to-hf", help="Orbax parameter checkpoint -> HF directory"))
    to_hf_cmd.add_argument("src")
    to_hf_cmd.add_argument("dst")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, args.verbose):
        if args.command == "from-hf":
            copied = from_hf(args.src, args.dst, args.architecture)
        else:
            copied = to_hf(args.src, args.dst)
    print(f"wrote {args.dst}" + (f" (with {', '.join(copied)})" if copied else ""))


if __name__ == "__main__":
    main()
