"""RoBERTa fine-tuning: `finetune_and_evaluate(config, workdir)`, the function behind `finetune.py`.

Any task of `finetune.tasks` on the pretraining runtime: the same sharded state, compiled step
(`steps.make_train_step` with the task's loss), loop, checkpoints and metrics. Reads top to bottom:
the config checks, the runtime, tokenizer and task data, model and initial weights, sharded state,
compiled steps, checkpoint restore, evaluation with the best export, the loop, the results.

The workdir collects `finetune_config.json`, `checkpoints/` (resume by running the same command),
TensorBoard events and `metrics.jsonl`, `best_hf/` (the params of the best evaluation, in HF format, for
`transformers.AutoModelFor...from_pretrained`), `best.json` and, at the end, `eval_results.json`.
"""

from __future__ import annotations

import logging
import math

import jax
import ml_collections
import numpy as np

from roberta_jax import storage
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.finetune import tasks, weights
from roberta_jax.finetune.data import FeatureBatches, TaskData, gather_rows, load_task_data
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES
from roberta_jax.train import metrics, optimizer, runtime, steps
from roberta_jax.train import workdir as workdir_files

log = logging.getLogger("absl")  # absl sets up the handlers


def finetune_and_evaluate(config, workdir: str) -> dict:
    """Fine-tunes (or resumes) in `workdir`; returns the results written to `eval_results.json`."""
    task = tasks.get_task(config.task)
    base_arch = checked_start(config, task)
    with runtime.Runtime(config, workdir, workdir_files.FINETUNE_CONFIG) as rt:
        tokenizer = load_tokenizer(config.tokenizer_path or weights.tokenizer_dir(config.init_from))
        data = load_task_data(config, tokenizer, task)
        total_steps, opt_config = schedule(config, len(data.train_features["input_ids"]))
        train_batches = FeatureBatches(data.arrays("train"), config.batch_size, seed=config.seed)
        log.info("%s: %d train / %d eval examples (%d / %d rows), %d steps", config.task, len(data.train_examples),
                 len(data.eval_examples), train_batches.num_rows, len(data.eval_features["input_ids"]), total_steps)

        arch = head_architecture(base_arch, config, task, data.labels)
        rt.fix_contract(workdir_files.finetuning_contract(config, arch, data.labels))
        model = ARCHITECTURES[task.ARCHITECTURE](arch, **rt.model_kwargs())
        tx, lr_schedule = optimizer.make_optimizer(opt_config)
        state, state_shardings = rt.create_state(model, tx)
        if config.init_random:  # the baseline: init_from's architecture and tokenizer, fresh weights
            log.info("%s: random init of %s's architecture (init_random)", task.ARCHITECTURE, config.init_from)
        else:
            state = with_initial_weights(config.init_from, state, state_shardings, task.ARCHITECTURE)
        train_step, eval_step = rt.compile(*task_steps(config, task, model, tx, lr_schedule), state_shardings)
        state, step = rt.resume(state, train_batches)

        best = BestEvaluation(rt.workdir, config.best_metric, resumed=step > 0)

        def evaluate(state, step) -> dict[str, float]:
            results = evaluate_task(rt, eval_step, state.params, config, task, data)
            if best.improves(results):
                best.record(step, results, lambda: runtime.export_hf(best.export_dir, model, state.params, tokenizer))
            return {**results, f"eval/best_{config.best_metric}": best.value}

        first_step = int(state.step) + 1
        tokens_per_step = int(np.prod(data.train_features["input_ids"].shape[1:])) * config.batch_size
        flops_per_step = metrics.flops_per_token(arch, config.data.max_length, lm_head=False) * tokens_per_step
        result = rt.train(state, train_step, train_batches,
                          rt.loop_config(total_steps, tokens_per_step, flops_per_step), evaluate)
        final = {k: v for k, v in result.last_metrics.items() if k.startswith("eval/")}
        if first_step > total_steps:  # a finished run started again: nothing trained, evaluate once
            final = evaluate(result.state, total_steps)
    results = {
        "task": config.task, "init_from": config.init_from, "best_metric": f"eval/{config.best_metric}",
        "best_step": best.step, "best": best.metrics, "final_step": int(result.state.step), "final": final,
        "best_hf": best.export_dir,
    }
    if rt.is_main:
        storage.write_json(storage.join(rt.workdir, workdir_files.RESULTS), results, indent=2)
    return results


def checked_start(config, task: tasks.Task) -> RobertaConfig:
    """The architecture of `init_from`, once the config fits it and the task; errors name the field."""
    if not config.init_from:
        raise ValueError("set --config.init_from to an HF directory (e.g. roberta-base) or a pretraining workdir")
    base_arch = weights.initial_config(config.init_from)
    limit = weights.max_length_limit(base_arch)
    if config.data.max_length > limit:
        raise ValueError(f"data.max_length={config.data.max_length} is longer than the {config.init_from} model's "
                         f"positions allow ({limit}); lower it")
    names = (*task.metric_names(config), "loss")
    if config.best_metric not in names:
        raise ValueError(f"best_metric={config.best_metric!r} is not a metric of this task; choose from {names}")
    return base_arch


def schedule(config, num_train: int) -> tuple[int, ml_collections.ConfigDict]:
    """Total steps (`total_steps`, or `num_epochs` over `num_train` examples at `batch_size`, partial
    batches dropped) and the optimizer section `optimizer.make_optimizer` takes, warmup from the ratio."""
    steps_per_epoch = num_train // config.batch_size
    total = config.total_steps or math.ceil(config.num_epochs * steps_per_epoch)
    if total <= 0:
        raise ValueError(f"{num_train} training examples make no step of batch_size={config.batch_size}")
    opt = ml_collections.ConfigDict(dict(config.optimizer))
    opt.total_steps = total
    opt.warmup_steps = round(config.optimizer.warmup_ratio * total)
    return total, opt


def with_initial_weights(init_from: str, state, state_shardings, architecture: str):
    """`state` with the params of `init_from` in place of the fresh ones, each leaf in its sharding."""
    # Adam's moments start at zero whatever the params are, so only the params are replaced.
    params, report = weights.load_initial(init_from, state.params)
    log.info("%s from %s; initialised here: %s", architecture, init_from, report)
    return state.replace(params=jax.tree.map(_put, params, state_shardings.params))


def _put(value, sharding_):
    """An array onto a global sharding, each device taking its slice (works across hosts); a fresh
    leaf, already there, stays."""
    if isinstance(value, jax.Array) and value.sharding == sharding_:
        return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding_, lambda index: value[index])


def head_architecture(base: RobertaConfig, config, task: tasks.Task, labels: list[str] | None) -> RobertaConfig:
    """`base` (the architecture of `init_from`) with the config's dropout and the fields the task decides."""
    return base.replace(**dict(config.model), **task.head_fields(config, labels))


def _forward(model, params, batch, dropout_rng):
    return model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=dropout_rng is None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
    )


def task_loss_fn(config, task: tasks.Task, model):
    """`loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))`: the task's `loss_sums` of the
    head's outputs, the objective `steps.make_train_step` takes. `dropout_rng=None` is deterministic."""

    def loss_fn(params, batch, dropout_rng):
        return task.loss_sums(config, _forward(model, params, batch, dropout_rng), batch)

    return loss_fn


def task_eval_fn(config, task: tasks.Task, model):
    """`eval_fn(params, batch, batch_index) -> (sums, outputs)`: one deterministic forward pass gives the
    eval loss sums and the task's `metric_outputs`."""

    def eval_fn(params, batch, _batch_index):
        out = _forward(model, params, batch, None)
        loss_sum, (count, correct) = task.loss_sums(config, out, batch)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}, task.metric_outputs(config, out)

    return eval_fn


def task_steps(config, task: tasks.Task, model, tx, lr_schedule):
    """The uncompiled (train_fn, eval_fn) of `task` on `model`."""
    train_fn = steps.make_train_step(tx, lr_schedule, task_loss_fn(config, task, model), seed=config.seed,
                                     num_micro=config.grad_accum_steps, accuracy_name=task.accuracy_name(config))
    return train_fn, task_eval_fn(config, task, model)


def evaluate_task(rt: runtime.Runtime, eval_step, params, config, task: tasks.Task, data: TaskData) -> dict:
    """The eval loss and the task's metrics over all eval features, as `eval/<name>` floats; those of each
    `data.extra_eval_files` set as `eval/<set>/<name>`."""
    results = {}
    for prefix, examples, features in data.eval_sets():
        eval_arrays = {k: features[k] for k in data.model_arrays}
        batches = FeatureBatches(eval_arrays, config.eval_batch_size or config.batch_size, shuffle=False,
                                 num_epochs=1, drop_remainder=False)
        sums, outputs = rt.evaluate(eval_step, params, batches)
        outputs = gather_rows(outputs, len(eval_arrays["input_ids"]))
        scores = task.score(config, outputs, features, examples, data.labels)
        results.update({f"eval/{prefix}{k}": float(v) for k, v in scores.items()})
        results[f"eval/{prefix}loss"] = sums["loss_sum"] / max(sums["count"], 1.0)
    return results


class BestEvaluation:
    """The best evaluation so far by `eval/<metric>` (lowest for `loss`, else highest): its record in
    `best.json` and its params in `best_hf/`, kept across a resume."""

    def __init__(self, workdir: str, metric: str, resumed: bool):
        self.key, self.sign = f"eval/{metric}", -1.0 if metric == "loss" else 1.0
        self.record_path = storage.join(workdir, workdir_files.BEST_RECORD)
        self.export_dir = storage.join(workdir, workdir_files.BEST_HF)
        self.step, self.metrics = 0, {}
        saved = storage.read_json(self.record_path) if resumed else None
        if saved is not None:
            self.step, self.metrics = saved["step"], saved["metrics"]

    @property
    def value(self) -> float:
        return self.metrics[self.key]

    def improves(self, results: dict[str, float]) -> bool:
        return not self.metrics or self.sign * results[self.key] > self.sign * self.value

    def record(self, step: int, results: dict[str, float], export) -> None:
        """Makes `results` of `step` the best: `export()` writes its params, then (process 0) the record."""
        self.step, self.metrics = int(step), dict(results)
        export()
        if jax.process_index() == 0:
            storage.write_json(self.record_path, {"step": int(step), "metrics": results}, indent=2)
