"""Config checks before any data or model work: every message names the config key, its value and the fix.

    validate.pretraining(config, num_devices=jax.device_count(), num_hosts=jax.process_count())

raises `ConfigError` at the first bad field; `train.cli.one_line_errors` prints it as one line. The checks
of the fields both entry points share (`train.config.add_runtime_fields`, batch and steps) are `runtime`.
"""

from __future__ import annotations

import numpy as np

from roberta_jax import storage
from roberta_jax.data.batches import INPUT_FORMATS, PAIR_FORMATS
from roberta_jax.suggest import nearest
from roberta_jax.train import sharding
from roberta_jax.train.config import PROBE_FIELDS, PROBE_MODES, SOURCE_FIELDS


class ConfigError(ValueError):
    """One bad config field: `key`, its `value` and what to do."""

    def __init__(self, key: str, value, problem: str, fix: str):
        self.key, self.value = key, value
        super().__init__(f"--config.{key}={value!r}: {problem}; {fix}")


def _require(ok: bool, key: str, value, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(key, value, problem, fix)


def runtime(config, num_devices: int, num_hosts: int) -> None:
    """The batch, its split over microbatches, hosts and the mesh, and the loop's intervals."""
    b, accum = config.batch_size, config.grad_accum_steps
    _require(b > 0, "batch_size", b, "the global batch must be positive", "set at least 1")
    _require(accum > 0, "grad_accum_steps", accum, "must be positive", "use 1 for no accumulation")
    _require(b % accum == 0, "grad_accum_steps", accum, f"does not divide batch_size={b}",
             "choose a divisor of the batch (or another batch)")
    _require(b % num_hosts == 0, "batch_size", b, f"does not split over the {num_hosts} hosts",
             f"use a multiple of {num_hosts}")
    try:
        sizes = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(dict(config.mesh), num_devices)))
    except ValueError as err:
        raise ConfigError("mesh", dict(config.mesh), str(err).rstrip("."),
                          f"make the axes multiply to the {num_devices} devices (one may be -1)") from None
    split = sharding.batch_shards(sizes, sharding.axis_rules(config.logical_axis_rules))
    _require((b // accum) % split == 0, "batch_size", b,
             f"each of the {accum} microbatches of {b // accum} does not split over the {split} batch shards "
             f"of mesh {sizes}", f"use a multiple of {split * accum}")
    for key in ("log_every_steps", "eval_every_steps", "max_nonfinite_steps", "checkpoint.every_steps",
                "checkpoint.keep"):
        value = config[key.split(".")[0]][key.split(".")[1]] if "." in key else config[key]
        _require(value > 0, key, value, "must be positive", "set at least 1")
    _require(config.optimizer.peak_lr > 0 and np.isfinite(config.optimizer.peak_lr), "optimizer.peak_lr",
             config.optimizer.peak_lr, "the learning rate must be a positive number", "e.g. 6e-4 (pretraining)")


def pretraining(config, num_devices: int, num_hosts: int) -> None:
    """`runtime`, then the fields of `train.config.default_config`: data, row length, steps."""
    runtime(config, num_devices, num_hosts)
    d = config.data
    if d.sources:
        sources(config)
    _require(bool(d.train_files.strip() or d.prepared or d.sources), "data.train_files", d.train_files,
             "no training data",
             "name files, directories or globs (comma-separated), a prepared directory (data.prepared), or sources "
             "(data.sources)")
    limit = config.model.max_position_embeddings - 2  # RoBERTa's positions start after pad_token_id
    _require(2 < d.max_seq_length <= limit, "data.max_seq_length", d.max_seq_length,
             f"rows must fit the position table (model.max_position_embeddings - 2 = {limit})",
             f"lower it to at most {limit} or raise model.max_position_embeddings")
    _require(config.total_steps > 0, "total_steps", config.total_steps, "nothing would be trained",
             "set the number of steps to train")
    _require(not (d.eval_files.strip() and d.eval_fraction), "data.eval_fraction", d.eval_fraction,
             f"held-out data comes either from data.eval_files ({d.eval_files!r}) or from a fraction of the "
             "training documents", "set --config.data.eval_fraction=0 to use eval_files")
    _require(0 <= d.eval_fraction < 1, "data.eval_fraction", d.eval_fraction, "must be in [0, 1)",
             "e.g. 0.05 to hold out 5% of the documents")
    _require(config.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", config.optimizer.warmup_steps,
             "must not be negative", "use 0 for no warmup")
    input_format(d)
    probes(config, num_devices)


def input_format(d) -> None:
    """`data.input_format` is one of `batches.INPUT_FORMATS` and fits the rest of the `data` section."""
    fmt = d.input_format
    guess = nearest(fmt, INPUT_FORMATS)
    _require(fmt in INPUT_FORMATS, "data.input_format", fmt, f"not one of {', '.join(INPUT_FORMATS)}",
             f"did you mean {guess!r}?" if guess else "choose one of them")
    prepared = d.prepared or next((s.prepared for s in d.sources.values() if s.prepared), "")
    _require(fmt == "full_sentences" or not prepared, "data.input_format", fmt,
             f"prepared data ({prepared}) holds FULL-SENTENCES rows", "train on data.train_files for this format")
    if fmt in PAIR_FORMATS:
        _require(d.cross_document_attention, "data.cross_document_attention", d.cross_document_attention,
                 f"a {fmt} row is one pair whose A and B must see each other",
                 "leave it True (a pair row never spans documents that could be kept apart)")
        _require(d.max_seq_length >= 6, "data.max_seq_length", d.max_seq_length,
                 "a pair row <s> A </s></s> B </s> needs at least 6 tokens", "raise it")


def sources(config) -> None:
    """`data.sources`: each entry has only `SOURCE_FIELDS`, a positive weight and training text of its own (files or a
    prepared directory; or `data.prepared`, a mixture directory); the single-source data fields are left empty."""
    d = config.data
    _require(not d.train_files.strip(), "data.train_files", d.train_files,
             f"data.sources ({', '.join(d.sources)}) already names the training data",
             "set it to '' and give each source its train_files")
    _require(not d.eval_files.strip(), "data.eval_files", d.eval_files, "a mixture evaluates each source apart",
             "set it to '' and give each source its eval_files")
    _require(config.masking.static_copies == 0, "masking.static_copies", config.masking.static_copies,
             "static masks are keyed by row, and a mixture's rows come from several sources", "use 0 with data.sources")
    for name, source in d.sources.items():
        key = f"data.sources.{name}"
        for field in source:
            guess = nearest(field, SOURCE_FIELDS)
            _require(field in SOURCE_FIELDS, f"{key}.{field}", source[field], "not a source field",
                     f"did you mean {guess!r}?" if guess else f"use one of {', '.join(SOURCE_FIELDS)}")
        weight = source.get("weight", 0)
        _require(isinstance(weight, int | float) and np.isfinite(weight) and weight > 0, f"{key}.weight", weight,
                 "a source's weight must be a positive number", "e.g. 1.0 (weights are relative)")
        files, prepared = source.get("train_files", "").strip(), source.get("prepared", "")
        _require(not (files and prepared), f"{key}.prepared", prepared,
                 f"the source also names train_files ({files!r})", "keep one of the two")
        _require(bool(files or prepared or d.prepared), f"{key}.train_files", files, "the source has no training text",
                 "name its files, or its prepared directory (prepared)")
        _require(not (source.get("eval_files", "").strip() and d.eval_fraction), "data.eval_fraction",
                 d.eval_fraction, f"{key}.eval_files already holds that source's evaluation text",
                 "set --config.data.eval_fraction=0")


def probes(config, num_devices: int) -> None:
    """`probes`: an interval with tasks, each task's fields known (`config.PROBE_FIELDS`), its files there, its
    rows within the position table and its batch split over the mesh's batch shards. The task names are
    checked where the tasks are known (`finetune.probe`)."""
    p = config.probes
    _require(p.every_steps >= 0, "probes.every_steps", p.every_steps, "must not be negative", "use 0 for no probes")
    if not p.every_steps:
        return
    _require(bool(p.tasks), "probes.tasks", dict(p.tasks), f"probes.every_steps={p.every_steps} has nothing to run",
             "add a task with train.config.probe_task(config, name, ...) or set probes.every_steps=0")
    sizes = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(dict(config.mesh), num_devices)))
    split = sharding.batch_shards(sizes, sharding.axis_rules(config.logical_axis_rules))
    limit = config.model.max_position_embeddings - 2
    for name, t in p.tasks.items():
        key = f"probes.tasks.{name}"
        for field in t.keys():
            guess = nearest(field, PROBE_FIELDS)
            _require(field in PROBE_FIELDS, f"{key}.{field}", t[field], "not a probe field",
                     f"did you mean {guess!r}?" if guess else f"the fields are {', '.join(PROBE_FIELDS)}")
        t = {**PROBE_FIELDS, **dict(t)}
        guess = nearest(t["mode"], PROBE_MODES)
        _require(t["mode"] in PROBE_MODES, f"{key}.mode", t["mode"], f"not one of {', '.join(PROBE_MODES)}",
                 f"did you mean {guess!r}?" if guess else "choose one of them")
        for field in ("train_file", "eval_file"):
            _require(bool(t[field]) and storage.exists(t[field]), f"{key}.{field}", t[field], "no such file",
                     "name the task's labelled file (local or gs://)")
        for field in ("steps", "batch_size"):
            _require(t[field] > 0, f"{key}.{field}", t[field], "must be positive", "set at least 1")
        _require(t["lr"] > 0 and np.isfinite(t["lr"]), f"{key}.lr", t["lr"], "the learning rate must be a positive "
                 "number", "e.g. 1e-4 (finetune) or 1e-3 (linear)")
        _require(2 < t["max_seq_length"] <= limit, f"{key}.max_seq_length", t["max_seq_length"],
                 f"rows must fit the position table (model.max_position_embeddings - 2 = {limit})",
                 f"lower it to at most {limit}")
        _require(t["batch_size"] % split == 0, f"{key}.batch_size", t["batch_size"],
                 f"does not split over the {split} batch shards of mesh {sizes}", f"use a multiple of {split}")
