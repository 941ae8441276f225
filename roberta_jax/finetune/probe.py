"""Downstream probes during pretraining: how well the model being pretrained fine-tunes, at intervals.

    callbacks = probe_callbacks(config, rt, tokenizer, arch)   # `pretrain.train_and_evaluate` calls it
    rt.train(state, train_step, batches, loop_config, evaluate, callbacks)

Each task of `config.probes.tasks` (`train.config.probe_task`) becomes one `loop.IntervalCallback`: at every
`probes.every_steps` and at the last step it copies the encoder of the current (sharded) params under a fresh
task head, fine-tunes the copy for `steps` steps (`mode="linear"`: the head only, on frozen features) and scores
it on the dev file: `downstream/<name>/<metric>` (the task's metrics and `loss`) and `perf/probe_seconds/<name>`.

The probe is finetune's own code on the pretraining runtime (the task's data, head, loss and eval step, the
same mesh and rules): only the config differs. It never touches the pretraining state, its RNG or its data
order: it reads the params and trains a copy, with an RNG and batch order from the probe's `seed` alone, the
same at every interval, so the pretraining losses are bit-identical with and without probes. Its steps are
compiled once per run, when the callbacks are built, and reused at every interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from roberta_jax.finetune import config as finetune_config
from roberta_jax.finetune import run, tasks
from roberta_jax.finetune.data import FeatureBatches, load_task_data
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES
from roberta_jax.train import loop, optimizer, runtime, steps

log = logging.getLogger("absl")

ENCODER = "roberta"  # the params subtree every head model shares with the MLM model


def probe_callbacks(config, rt: runtime.Runtime, tokenizer, arch: RobertaConfig) -> list[loop.IntervalCallback]:
    """One callback per probe of `config.probes.tasks`, on the run's runtime `rt`, with its `tokenizer` and
    architecture `arch` (the pretraining model's): data read and steps compiled now, once."""
    every = config.probes.every_steps
    return [loop.IntervalCallback(every, Probe(name, spec, rt, tokenizer, arch))
            for name, spec in config.probes.tasks.items()]


def probe_finetune_config(spec) -> ml_collections.ConfigDict:
    """The fine-tuning config (`finetune.config.default_config`) of a probe's `spec` (`train.config.PROBE_FIELDS`):
    its task, files, row length, batch, steps, peak learning rate and seed; the rest is finetune's recipe. A linear
    probe reads features without dropout."""
    c = finetune_config.default_config()
    c.task, c.seed = spec.task, spec.seed
    c.data.train_file, c.data.eval_file, c.data.max_length = spec.train_file, spec.eval_file, spec.max_seq_length
    c.batch_size, c.total_steps, c.optimizer.peak_lr = spec.batch_size, spec.steps, spec.lr
    if spec.mode == "linear":
        c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
    return c


class Probe:
    """`probe(state, step) -> {downstream/<name>/<metric>: value, perf/probe_seconds/<name>: seconds}`."""

    def __init__(self, name: str, spec, rt: runtime.Runtime, tokenizer, arch: RobertaConfig):
        self.name, self.rt, self.steps = name, rt, spec.steps
        self.config = cfg = probe_finetune_config(spec)
        self.task = task = tasks.get_task(cfg.task)
        self.data = load_task_data(cfg, tokenizer, task)
        self.model = model = ARCHITECTURES[task.ARCHITECTURE](run.head_architecture(arch, cfg, task, self.data.labels),
                                                               **rt.model_kwargs())
        _, opt = run.schedule(cfg, len(self.data.train_features["input_ids"]))
        tx, lr_schedule = optimizer.make_optimizer(opt)
        loss_fn = run.task_loss_fn(cfg, task, model)
        if spec.mode == "linear":
            tx, loss_fn = frozen_encoder(tx), frozen_encoder_loss(loss_fn)
        # The head's init, like the probe's dropout and batch order, comes from the probe's seed.
        self.fresh, shardings = steps.create_train_state(model, tx, rt.mesh, cfg.seed, rt.rules)
        train_fn = steps.make_train_step(tx, lr_schedule, loss_fn, seed=cfg.seed,
                                         accuracy_name=task.accuracy_name(cfg))
        self.train_step = runtime.jit_train_step(train_fn, shardings, rt.mesh, rt.rules)
        self.eval_step = runtime.jit_eval_step(run.task_eval_fn(cfg, task, model), shardings, rt.mesh, rt.rules)
        self.start = jax.jit(start_state, out_shardings=shardings)
        log.info("probe %s: %s (%s), %d train / %d dev examples, %d steps of %d", name, cfg.task, spec.mode,
                 len(self.data.train_examples), len(self.data.eval_examples), spec.steps, cfg.batch_size)

    def __call__(self, state, step: int) -> dict[str, float]:
        clock = time.perf_counter()
        params = self.train(state.params).params
        results = run.evaluate_task(self.rt, self.eval_step, params, self.config, self.task, self.data)
        out = {f"downstream/{self.name}/{k.removeprefix('eval/')}": v for k, v in results.items()}
        out[f"perf/probe_seconds/{self.name}"] = time.perf_counter() - clock
        return out


    def train(self, params) -> steps.TrainState:
        """The probe's state after its `steps` steps from the encoder of `params` (the pretraining params, left
        as they are), its batches in the same order at every call."""
        state = self.start(self.fresh, params[ENCODER])
        batches = FeatureBatches(self.data.arrays("train"), self.config.batch_size, seed=self.config.seed)
        for _ in range(self.steps):
            state, _ = self.train_step(state, self.rt.put(next(batches)))
        return state


def start_state(fresh: steps.TrainState, encoder: Any) -> steps.TrainState:
    """The probe's first state: `fresh` (a new head and optimizer state, step 0) with the pretraining `encoder`
    params. Every leaf is copied: the train step donates its state, and neither the fresh state (reused at every
    interval) nor the pretraining params may be among the buffers it gives away."""
    return jax.tree.map(jnp.copy, fresh.replace(params={**fresh.params, ENCODER: encoder}))


def _encoder_mask(params) -> dict:
    """True at the encoder's leaves, False at the head's."""
    return {k: jax.tree.map(lambda _, frozen=(k == ENCODER): frozen, v) for k, v in params.items()}


def frozen_encoder(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` whose updates of the encoder are zero: AdamW's decoupled weight decay would move it otherwise."""
    return optax.chain(tx, optax.masked(optax.set_to_zero(), lambda p: _encoder_mask(nn.meta.unbox(p))))


def frozen_encoder_loss(loss_fn):
    """`loss_fn` with no gradient through the encoder: the backward pass stops at the features."""

    def loss(params, batch, dropout_rng):
        return loss_fn({**params, ENCODER: jax.lax.stop_gradient(params[ENCODER])}, batch, dropout_rng)

    return loss
