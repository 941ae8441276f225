"""Tokenize and pack a corpus once, for many hosts to train from (`roberta_jax.data.prepare`):

    python -m roberta_jax.tools.prepare --config configs/base.py --out /data/prepared \\
        --config.data.train_files=/data/corpus --config.tokenizer.path=/data/roberta-base
    python train.py --config configs/base.py --workdir runs/base --config.data.prepared=/data/prepared

The same config file and `--config.*` overrides as train.py: `data.train_files`, `data.eval_files`,
`data.format` and `data.text_field` (text, JSON lines, Parquet, compressed `.gz .bz2 .xz .zst` or not; or a Hub
dataset name or local dataset directory with `data.format=hub`, `--hub_config`, `--hub_split`), `data.doc_split`
(or `data.doc_separator`), `data.max_seq_length` and the tokenizer (`tokenizer.path`, else one trained on the
training files) decide the output. `--num_workers` processes on this machine, or `--scheduler` the
address of a running Dask cluster. The tokenizer is kept in OUT/tokenizer; train.py uses it when
`tokenizer.path` is empty; a rerun whose `tokenizer.kind`, `vocab_size` or `min_frequency` is not what the one
there was trained with stops, naming them. Rerunning completes an interrupted prepare and gives identical files.
OUT, the training files and `tokenizer.path` may each be local or on `gs://`.

A config with `data.sources` (configs/mixture.py) prepares each source into OUT/<name>/, a prepared directory of
its own (its tokenizer copied in), and then writes OUT/mixture.json with every source's rows and tokens
(`shards.write_mixture_manifest`); train.py reads it with `--config.data.prepared=OUT`. One tokenizer serves
every source: `tokenizer.path`, else one trained on all their training files.
"""

import json
import os
import tempfile

from absl import flags
from ml_collections import config_flags

from roberta_jax import storage
from roberta_jax.data import prepare, shards
from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.data.tokenizer import is_tokenizer_dir
from roberta_jax.train import cli, pretrain, validate
from roberta_jax.train import workdir as workdir_files

# The `tokenizer.*` fields a tokenizer trained into OUT/tokenizer is trained with, kept in its TRAINED_WITH_FILE.
TRAINED_WITH = ("kind", "vocab_size", "min_frequency")
TRAINED_WITH_FILE = "trained_with.json"

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "training config file", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "the prepared directory (local or gs://)", required=True)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count(), "worker processes of a local Dask cluster")
_SCHEDULER = flags.DEFINE_string("scheduler", "", "address of a running Dask scheduler (tcp://host:8786) instead")
_PIECE_MB = flags.DEFINE_float("piece_mb", prepare.PIECE_BYTES / 2**20, "MiB of text per shard (cut at documents)")
_HUB_CONFIG = flags.DEFINE_string("hub_config", None, "with data.format=hub: the dataset's configuration")
_HUB_SPLIT = flags.DEFINE_string("hub_split", "train", "with data.format=hub: the split train_files names")


def main(argv):
    del argv
    config = _CONFIG.value
    pretrain.check_prepared_config(config)
    if config.data.sources:
        validate.sources(config)
    tokenizer = _tokenizer(config, _OUT.value)
    if not config.data.sources:
        print(json.dumps(prepare_source(config, config.data, tokenizer, _OUT.value)["stats"]))
        return
    manifests = {}
    for name in sorted(config.data.sources):
        directory = storage.join(_OUT.value, name)
        with pretrain.source_errors(name):
            if config.data.sources[name].prepared:
                raise ValueError(f"already prepared in {config.data.sources[name].prepared}; name its train_files "
                                 "to prepare it here")
            manifests[name] = prepare_source(config, config.data.sources[name], tokenizer, directory)
        if not is_tokenizer_dir(storage.join(directory, shards.TOKENIZER)):
            with storage.staged_dir(storage.join(directory, shards.TOKENIZER)) as staging:
                tokenizer.save(staging)
    weights = {name: config.data.sources[name].weight for name in manifests}
    mixture = shards.write_mixture_manifest(_OUT.value, manifests, weights)
    print(json.dumps({name: entry["splits"] for name, entry in mixture["sources"].items()}))


def prepare_source(config, source, tokenizer: FastTokenizer, out: str) -> dict:
    """Prepares one source into `out` (`prepare.prepare`) and returns its manifest: `source` holds the
    `data` fields of its text (the single-source `config.data`, or an entry of `data.sources`)."""
    return prepare.prepare(
        pretrain.split_list(source.train_files), tokenizer, out,
        vocab_size=pretrain.model_config(config, tokenizer).vocab_size,
        eval_sources=pretrain.split_list(source.eval_files) or None, max_seq_length=config.data.max_seq_length,
        doc_split=source.doc_split, doc_separator=source.doc_separator, format=source.format,
        text_field=source.text_field, hub_config=_HUB_CONFIG.value, hub_split=_HUB_SPLIT.value,
        piece_bytes=round(_PIECE_MB.value * 2**20),
        num_workers=_NUM_WORKERS.value, scheduler=_SCHEDULER.value or None, progress=config.progress,
    )


def _tokenizer(config, out: str) -> FastTokenizer:
    """The run's tokenizer (`pretrain.load_or_train_tokenizer`: `tokenizer.path`, else OUT/tokenizer from an
    earlier prepare if it was trained with this config's `TRAINED_WITH` fields, else one trained on the
    training files), with a copy kept in OUT/tokenizer (and the fields a trained one was trained with)."""
    saved = storage.join(out, shards.TOKENIZER)
    whole = is_tokenizer_dir(saved) and not storage.exists(storage.join(saved, storage.INCOMPLETE))
    trained_with = {f"tokenizer.{k}": config.tokenizer[k] for k in TRAINED_WITH}
    if whole and not config.tokenizer.path:
        _check_trained_with(saved, trained_with)
        config = config.copy_and_resolve_references()
        config.tokenizer.path = saved
    # OUT is not a workdir: a tokenizer trained here lands in a scratch workdir and is copied into OUT below.
    with tempfile.TemporaryDirectory(prefix="roberta_jax-prepare-") as scratch:
        tokenizer = pretrain.load_or_train_tokenizer(config, scratch)
    if not whole:
        with storage.staged_dir(saved) as staging:  # swapped in whole: a reader never sees half of it
            tokenizer.save(staging)
            if not config.tokenizer.path:
                storage.write_json(storage.join(staging, TRAINED_WITH_FILE), trained_with, indent=1, sort_keys=True)
    return tokenizer


def _check_trained_with(saved: str, trained_with: dict) -> None:
    """Raises ValueError naming each `tokenizer.*` field whose value differs from the one the tokenizer in
    `saved` was trained with (nothing to compare for a copy of `tokenizer.path`, which has no such record)."""
    recorded = storage.read_json(storage.join(saved, TRAINED_WITH_FILE)) or trained_with
    changed = workdir_files.changed_fields(recorded, trained_with)
    if changed:
        raise ValueError(
            f"the tokenizer in {saved} was trained with other settings; this prepare changes {', '.join(changed)}. "
            f"Rerun with the values in {storage.join(saved, TRAINED_WITH_FILE)}, or choose another --out or delete "
            f"{storage.parent(saved)}."
        )


if __name__ == "__main__":
    cli.run(main)
