"""RoBERTa fine-tuning: `python finetune.py --config configs/finetune/sst2.py --workdir DIR --config.init_from=...`.

Sequence classification (GLUE-style, single sentences or pairs; regression), token classification
(CoNLL NER), extractive QA (SQuAD v1.1) and multiple choice (SWAG) on the pretraining step machinery:
the same sharded state, compiled step (`steps.make_train_step` with the task's loss), loop,
checkpoints and metrics. Reads top to bottom: distributed setup, workdir, tokenizer and task data, model
and initial weights, sharded state, compiled steps, checkpoint restore, evaluation with the best export,
the loop, the results.

The workdir collects `finetune_config.json`, `checkpoints/` (resume by running the same command),
TensorBoard events and `metrics.jsonl`, `best_hf/` (the params of the best evaluation, in HF format, for
`transformers.AutoModelFor...from_pretrained`), `best.json` and, at the end, `eval_results.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from roberta_jax.data.batches import to_global
from roberta_jax.data.tokenizer import RobertaTokenizer
from roberta_jax.finetune import lib
from roberta_jax.model import hf_io
from roberta_jax.model.heads import ARCHITECTURES
from roberta_jax.train import checkpoint as ckpt
from roberta_jax.train import cli, loop, metrics, sharding, steps

log = logging.getLogger("absl")  # absl sets up the handlers
BEST_HF, BEST_RECORD, RESULTS = "best_hf", "best.json", "eval_results.json"


def schedule(config, num_train: int) -> tuple[int, ml_collections.ConfigDict]:
    """Total steps (`total_steps`, or `num_epochs` over `num_train` examples at `batch_size`, partial
    batches dropped) and the optimizer section `steps.make_optimizer` takes, warmup from the ratio."""
    steps_per_epoch = num_train // config.batch_size
    total = config.total_steps or math.ceil(config.num_epochs * steps_per_epoch)
    if total <= 0:
        raise ValueError(f"{num_train} training examples make no step of batch_size={config.batch_size}")
    opt = ml_collections.ConfigDict(dict(config.optimizer))
    opt.total_steps = total
    opt.warmup_steps = round(config.optimizer.warmup_ratio * total)
    return total, opt


def finetune_and_evaluate(config, workdir: str) -> dict:
    """Fine-tunes (or resumes) in `workdir`; returns the results written to `eval_results.json`."""
    # -- Distributed setup ------------------------------------------------------------------
    cli.initialize_distributed(config.distributed)
    is_main = jax.process_index() == 0

    # -- Workdir and the resolved config ----------------------------------------------------
    if not config.init_from:
        raise ValueError("set --config.init_from to an HF directory (e.g. roberta-base) or a pretraining workdir")
    base_arch = lib.initial_config(config.init_from)
    if config.data.max_length > lib.max_length_limit(base_arch):
        raise ValueError(f"data.max_length={config.data.max_length} is longer than the {config.init_from} model's "
                         f"positions allow ({lib.max_length_limit(base_arch)}); lower it")
    names = lib.metric_names(config)
    if config.best_metric not in names:
        raise ValueError(f"best_metric={config.best_metric!r} is not a metric of this task; choose from {names}")
    workdir = cli.prepare_workdir(workdir, config, "finetune_config.json")
    writer = metrics.MetricWriter(workdir)

    # -- Tokenizer and task data ------------------------------------------------------------
    tokenizer = RobertaTokenizer.from_pretrained(config.tokenizer_path or lib.tokenizer_dir(config.init_from))
    data = lib.load_task_data(config, tokenizer)
    regression = config.task == "classification" and config.data.regression
    total_steps, opt_config = schedule(config, len(data.train_features["input_ids"]))
    train_batches = lib.FeatureBatches(data.arrays("train"), config.batch_size, seed=config.seed)
    log.info("%s: %d train / %d eval examples (%d / %d rows), %d steps", config.task, len(data.train_examples),
             len(data.eval_examples), train_batches.num_rows, len(data.eval_features["input_ids"]), total_steps)

    # -- Model, optimizer, mesh, and the sharded state with the initial weights -------------
    architecture = lib.HEADS[config.task]
    arch = base_arch.replace(**lib.head_overrides(config, data))
    model = ARCHITECTURES[architecture](
        arch, dtype=jnp.dtype(config.dtype), implementation=config.attention_implementation or None,
        remat=config.remat,
    )
    tx, lr_schedule = steps.make_optimizer(opt_config)
    mesh = sharding.make_mesh(dict(config.mesh))
    state, state_shardings = steps.create_train_state(model, tx, mesh, config.seed)
    # Adam's moments start at zero whatever the params are, so only the params are replaced.
    params, report = lib.load_initial(config.init_from, state.params)
    state = state.replace(params=jax.tree.map(_put, params, state_shardings.params))
    del params
    log.info("%s from %s; initialised here: %s", architecture, config.init_from, report)
    log.info("mesh %s, %s parameters", dict(mesh.shape),
             f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

    # -- Compiled steps ---------------------------------------------------------------------
    loss_fn = lib.task_loss(config.task, model, regression)
    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    train_step = jax.jit(
        steps.make_train_step(tx, lr_schedule, loss_fn, seed=config.seed,
                                  num_micro=config.grad_accum_steps,
                                  accuracy_name=lib.accuracy_name(config.task, regression)),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        lib.task_eval_step(config.task, model, regression),
        in_shardings=(state_shardings.params, batch_sharding),
        out_shardings=replicated,
    )

    # -- Checkpoint restore -----------------------------------------------------------------
    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps, config.checkpoint.keep,
        config.checkpoint.asynchronous,
    )
    state, step = checkpointer.resume(state, train_batches)
    best = {"step": 0, "metrics": {}}
    if step:
        log.info("resumed from step %d", step)
        if os.path.isfile(os.path.join(workdir, BEST_RECORD)):
            with open(os.path.join(workdir, BEST_RECORD), encoding="utf-8") as f:
                best = json.load(f)

    # -- Evaluation, and the export of the best params -------------------------------------
    eval_arrays = data.arrays("eval")
    num_eval = len(eval_arrays["input_ids"])
    key = f"eval/{config.best_metric}"
    sign = -1.0 if config.best_metric == "loss" else 1.0

    def evaluate(state, step) -> dict[str, float]:
        batches = lib.FeatureBatches(eval_arrays, config.eval_batch_size or config.batch_size,
                                              shuffle=False, num_epochs=1, drop_remainder=False)
        sums, outputs = {"loss_sum": 0.0, "count": 0.0}, []
        for batch in batches:
            out_sums, out = jax.device_get(eval_step(state.params, to_global(batch, mesh)))
            sums = {k: sums[k] + float(out_sums[k]) for k in sums}
            outputs.append(out)
        scores = lib.compute_metrics(config, data, lib.gather_rows(outputs, num_eval))
        results = {f"eval/{k}": float(v) for k, v in scores.items()}
        results["eval/loss"] = sums["loss_sum"] / max(sums["count"], 1.0)
        if not best["metrics"] or sign * results[key] > sign * best["metrics"][key]:
            best.update(step=int(step), metrics=dict(results))
            export_best(state.params, step, results)
        results[f"eval/best_{config.best_metric}"] = best["metrics"][key]
        return results

    def export_best(params, step, results) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        if not is_main:
            return
        # Written aside and swapped in, so an interrupted export leaves the previous best whole.
        partial = os.path.join(workdir, f"{BEST_HF}.partial")
        hf_io.save_hf(partial, model, jax.device_get(params), tokenizer=tokenizer)
        shutil.rmtree(os.path.join(workdir, BEST_HF), ignore_errors=True)
        os.replace(partial, os.path.join(workdir, BEST_HF))
        with open(os.path.join(workdir, BEST_RECORD), "w", encoding="utf-8") as f:
            json.dump({"step": int(step), "metrics": results}, f, indent=2)

    # -- The loop ---------------------------------------------------------------------------
    first_step = int(state.step) + 1
    tokens_per_step = int(np.prod(data.train_features["input_ids"].shape[1:])) * config.batch_size
    loop_config = loop.LoopConfig(
        total_steps=total_steps, tokens_per_step=tokens_per_step,
        flops_per_step=metrics.flops_per_token(arch, config.data.max_length, lm_head=False) * tokens_per_step,
        log_every_steps=config.log_every_steps, eval_every_steps=config.eval_every_steps,
        max_nonfinite_steps=config.max_nonfinite_steps, progress=config.progress,
    )
    try:
        result = loop.run(state, train_step, train_batches, mesh, loop_config, checkpointer, writer, evaluate)
        final = {k: v for k, v in result.last_metrics.items() if k.startswith("eval/")}
        if first_step > total_steps:  # a finished run started again: nothing trained, evaluate once
            final = evaluate(result.state, total_steps)
    finally:
        checkpointer.close()
        writer.close()

    # -- Results ----------------------------------------------------------------------------
    results = {
        "task": config.task, "init_from": config.init_from, "best_metric": key,
        "best_step": best["step"], "best": best["metrics"], "final_step": int(result.state.step), "final": final,
        "best_hf": os.path.join(workdir, BEST_HF),
    }
    if is_main and not result.stopped_by_signal:
        with open(os.path.join(workdir, RESULTS), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


def _put(value, sharding_):
    """An array onto a global sharding, each device taking its slice (works across hosts); a fresh
    leaf, already there, stays."""
    if isinstance(value, jax.Array) and value.sharding == sharding_:
        return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding_, lambda index: value[index])


# -- Command line --------------------------------------------------------------------------


def main(argv=None) -> None:
    # Flags are defined here rather than at import, so the module imports beside train.py's flags.
    config = config_flags.DEFINE_config_file("config", None, "fine-tuning config file", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "where checkpoints, logs, best_hf/ and eval_results.json go")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        for handler in logging.getLogger().handlers:
            handler.addFilter(cli.QuietLibraries())
        results = finetune_and_evaluate(config.value, workdir.value)
        print(json.dumps({k: results[k] for k in ("best_metric", "best_step", "best", "final_step", "final")},
                         indent=1))

    app.run(run, argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
