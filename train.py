"""RoBERTa pretraining: `python train.py --config configs/base.py --workdir DIR`.

The same code runs on a TPU pod, a GPU node or a laptop; the mesh shape, batch and model come
from the config, and any field can be overridden (`--config.optimizer.peak_lr=4e-4`).
Reads top to bottom: distributed setup, workdir, tokenizer, data, model and optimizer, sharded
state, compiled steps, checkpoint restore, the loop, the end.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from roberta_jax.data.batches import BatchIterator, build_pretraining_data, to_global
from roberta_jax.data.tokenizer import RobertaTokenizer
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.tools import convert
from roberta_jax.train import checkpoint as ckpt
from roberta_jax.train import cli, loop, masking, metrics, sharding, steps

log = logging.getLogger("absl")  # absl sets up the handlers
MODEL_CONFIG = convert.WORKDIR_MODEL_CONFIG  # the architecture, as HF config.json, beside the checkpoints


def load_or_train_tokenizer(config, workdir: str) -> RobertaTokenizer:
    if config.tokenizer.path:
        return RobertaTokenizer.from_pretrained(config.tokenizer.path)
    saved = os.path.join(workdir, "tokenizer")
    if os.path.isfile(os.path.join(saved, "vocab.json")):
        return RobertaTokenizer.from_pretrained(saved)
    # Training is deterministic, so every host trains the same tokenizer; process 0 keeps it.
    tok = RobertaTokenizer.train(
        _split(config.data.train_files), vocab_size=config.tokenizer.vocab_size,
        min_frequency=config.tokenizer.min_frequency,
    )
    if jax.process_index() == 0:
        # Written aside and renamed, so another host never reads a half-written tokenizer.
        partial = f"{saved}.partial"
        tok.save(partial)
        os.replace(partial, saved)
    return tok


def _split(files: str) -> list[str]:
    return [f for f in (s.strip() for s in files.split(",")) if f]


def model_config(config, tokenizer: RobertaTokenizer) -> RobertaConfig:
    fields = dict(config.model)
    # roberta-base's files leave ids 50261-50263 unused: the embedding needs the largest id + 1.
    needed = max(tokenizer.vocab_size, max(tokenizer.all_special_ids) + 1)
    vocab = fields.pop("vocab_size") or needed
    if vocab < needed:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's largest id + 1 = {needed}.")
    return RobertaConfig(
        vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, architectures=("RobertaForMaskedLM",), **fields,
    )


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the last logged metrics."""
    # -- Distributed setup ------------------------------------------------------------------
    cli.initialize_distributed(config.distributed)
    is_main = jax.process_index() == 0

    # -- Workdir and the resolved config ----------------------------------------------------
    workdir = cli.prepare_workdir(workdir, config, "train_config.json")
    writer = metrics.MetricWriter(workdir)

    # -- Tokenizer and data -----------------------------------------------------------------
    tokenizer = load_or_train_tokenizer(config, workdir)
    d = config.data
    data = build_pretraining_data(
        _split(d.train_files), tokenizer,
        eval_sources=_split(d.eval_files) or None, eval_fraction=d.eval_fraction, split_seed=config.seed,
        max_seq_length=d.max_seq_length, cache_dir=d.cache_dir or os.path.join(workdir, "data_cache"),
        num_proc=d.num_proc, format=d.format, text_field=d.text_field, doc_split=d.doc_split,
    )
    log.info("data: %s", data.stats)
    train_batches = BatchIterator(data.train, config.batch_size, seed=config.seed)

    # -- Model, optimizer, mesh and the sharded state ---------------------------------------
    arch = model_config(config, tokenizer)
    model = RobertaForMaskedLM(
        arch, dtype=jnp.dtype(config.dtype), implementation=config.attention_implementation or None,
        remat=config.remat,
    )
    if is_main:
        arch.to_json_file(os.path.join(workdir, MODEL_CONFIG))
    tx, schedule = steps.make_optimizer(config.optimizer)
    mesh = sharding.make_mesh(dict(config.mesh))
    state, state_shardings = steps.create_train_state(model, tx, mesh, config.seed)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("mesh %s, %s parameters", dict(mesh.shape), f"{num_params:,}")

    # -- Compiled steps ---------------------------------------------------------------------
    mask_fn = functools.partial(
        masking.mask_tokens, mask_token_id=tokenizer.mask_token_id, vocab_size=arch.vocab_size,
        special_ids=never_masked_ids(tokenizer, arch.vocab_size), **config.masking,
    )
    prepare, loss_fn = steps.mlm_prepare(mask_fn), steps.mlm_loss(model)
    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    train_step = jax.jit(
        steps.make_train_step(tx, schedule, loss_fn, seed=config.seed, num_micro=config.grad_accum_steps,
                                  prepare=prepare, accuracy_name="mlm_accuracy"),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        steps.make_eval_step(loss_fn, seed=config.eval_seed, prepare=prepare),
        in_shardings=(state_shardings.params, batch_sharding, None),
        out_shardings=replicated,
    )

    # -- Checkpoint restore -----------------------------------------------------------------
    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps, config.checkpoint.keep,
        config.checkpoint.asynchronous,
    )
    state, step = checkpointer.resume(state, train_batches)
    if step:
        log.info("resumed from step %d", step)

    def evaluate(state, _step) -> dict[str, float]:
        eval_batches = BatchIterator(data.eval, config.batch_size, shuffle=False, num_epochs=1,
                                     drop_remainder=False)
        sums = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
        for index, batch in zip(range(config.eval_batches), eval_batches):
            out = jax.device_get(eval_step(state.params, to_global(batch, mesh), index))
            sums = {k: sums[k] + float(out[k]) for k in sums}
        loss = sums["loss_sum"] / max(sums["count"], 1.0)
        return {"eval/loss": loss, "eval/perplexity": float(np.exp(loss)),
                "eval/accuracy": sums["correct"] / max(sums["count"], 1.0)}

    # -- The loop ---------------------------------------------------------------------------
    length = config.data.max_seq_length
    loop_config = loop.LoopConfig(
        total_steps=config.total_steps, tokens_per_step=config.batch_size * length,
        flops_per_step=metrics.flops_per_token(arch, length) * config.batch_size * length,
        log_every_steps=config.log_every_steps, eval_every_steps=config.eval_every_steps,
        max_nonfinite_steps=config.max_nonfinite_steps, progress=config.progress,
    )
    try:
        result = loop.run(state, train_step, train_batches, mesh, loop_config, checkpointer, writer,
                          evaluate if data.eval is not None else None)
    finally:
        checkpointer.close()
        writer.close()
    state = result.state

    if not result.stopped_by_signal and config.export_hf:
        params = state.params
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if is_main:
            hf_io.save_hf(os.path.join(workdir, "hf"), model, params, tokenizer=tokenizer)
    return result.last_metrics


def never_masked_ids(tokenizer: RobertaTokenizer, vocab_size: int) -> tuple[int, ...]:
    """Special ids, and ids below `vocab_size` that no token has (roberta-base's 50261-50263):
    never chosen for prediction, never drawn as random replacements."""
    unused = set(range(vocab_size)) - set(tokenizer.get_vocab().values())
    return tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id} | unused))


# -- Command line --------------------------------------------------------------------------

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "training config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "where checkpoints, logs and the exported model go")


def main(argv):
    del argv
    for handler in logging.getLogger().handlers:
        handler.addFilter(cli.QuietLibraries())
    final = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(json.dumps({k: round(v, 4) for k, v in final.items() if k.startswith(("train/loss", "eval/"))}))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
