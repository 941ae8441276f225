"""The train and eval steps, importable and pure: the train state built in its sharding, `train_step`, `eval_step`.

One compiled program per step: a whole-batch `prepare` (for MLM, dynamic masking with key
fold_in(key(seed), step)) -> forward (MLM: the vocabulary projected only at masked positions) ->
backward, accumulated over microbatches -> a global-norm check that skips non-finite updates ->
AdamW. Pretraining and fine-tuning use the same step with different `loss_fn`s (`objectives`).

Losses are sums over predictions divided by the number of predictions in the whole global
batch, so the result does not depend on how the batch is split into microbatches or devices.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from roberta_jax.model.heads import dummy_inputs
from roberta_jax.train import sharding
from roberta_jax.train.masking import masked_rng


class TrainState(struct.PyTreeNode):
    """Everything a checkpoint restores. `nonfinite_streak` counts consecutive skipped updates."""

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, seed: int, rules):
    """Builds the state directly in its sharding: shapes first, then a jitted init whose outputs
    land where the logical axis `rules` put them (nothing is materialised on one device first).

    The optimizer is initialised on the boxed params, so Adam's moments carry the same logical
    axis names as the params they follow. Returns (state, state_shardings).
    """
    boxed_init = _boxed_init(model, tx)
    rng = jax.random.key(seed)
    shardings = sharding.logical_shardings(jax.eval_shape(boxed_init, rng), mesh, rules)
    state = jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules):
    """(state, state_shardings) as `create_train_state` would make them, with `jax.ShapeDtypeStruct`
    leaves carrying their shardings instead of arrays: for compiling ahead of time, nothing allocated."""
    boxed = jax.eval_shape(_boxed_init(model, tx), jax.random.key(0))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.meta.unbox(boxed),
                         shardings)
    return state, shardings


def _boxed_init(model: nn.Module, tx: optax.GradientTransformation):
    """`init(rng) -> TrainState` whose params keep their logical-axis boxes."""

    def boxed_init(rng):
        params = model.init(rng, dummy_inputs(model))["params"]
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=tx.init(params), nonfinite_streak=zero,
                          nonfinite_total=zero)

    return boxed_init


def make_train_step(
    tx: optax.GradientTransformation,
    schedule,
    loss_fn,
    *,
    seed: int,
    num_micro: int = 1,
    prepare=None,
    accuracy_name: str = "accuracy",
):
    """The jittable `train_step(state, batch) -> (state, metrics)`, for any objective.

    `loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))` returns sums over the
    batch it is given; the step divides by the count over the whole global batch. A third element,
    `(count, correct, ratios)`, logs more: `ratios` {name: (sum, count)} of scalars, summed over the global
    batch and logged as `train/<name>` = sum / count (the NSP loss and accuracy beside MLM's).
    `prepare(rng, batch) -> batch` runs once on the global batch before it is split into
    `num_micro` microbatches (MLM masking), so its result does not depend on `num_micro`.
    Batches are dicts of arrays with the global batch first; float32 gradients are summed
    over the microbatches.
    """
    loss_fn = with_ratios(loss_fn)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        prepare_rng, dropout_key = jax.random.split(masked_rng(seed, state.step))
        if prepare is not None:
            batch = prepare(prepare_rng, batch)
        grads, loss_sum, (count, correct, ratios) = _accumulate(grad_fn, loss_fn, state.params, batch, dropout_key,
                                                                num_micro)
        denominator = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        loss = loss_sum / denominator
        grad_norm = optax.tree.norm(grads)
        new_state = _update(tx, state, grads, finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        metrics = {
            "train/loss": loss,
            f"train/{accuracy_name}": correct / denominator,
            "train/learning_rate": schedule(state.step),
            "train/grad_norm": grad_norm,
            "train/param_norm": optax.tree.norm(new_state.params),
            "train/num_predictions": count,
            "train/skipped_updates": new_state.nonfinite_total,
            "train/nonfinite_streak": new_state.nonfinite_streak,
            **{f"train/{name}": total / jnp.maximum(n, 1.0) for name, (total, n) in ratios.items()},
        }
        return new_state, metrics

    return train_step


def with_ratios(loss_fn):
    """`loss_fn` whose aux is always `(count, correct, ratios)` (`make_train_step`), `ratios` {} if it had none."""

    def loss_with_ratios(params, batch, dropout_rng):
        loss_sum, aux = loss_fn(params, batch, dropout_rng)
        return loss_sum, ((*aux, {}) if len(aux) == 2 else tuple(aux))

    return loss_with_ratios


def _accumulate(grad_fn, loss_fn, params, batch: dict[str, jax.Array], dropout_key: jax.Array, num_micro: int):
    """(grads, loss_sum, (count, correct, ratios)) summed over `num_micro` microbatches of `batch`, microbatch i
    with dropout key fold_in(dropout_key, i); `loss_fn` is what `grad_fn` differentiates."""
    # One microbatch goes through the loop too: without it, XLA's SPMD partitioner (jax 0.9.2 and
    # 0.10.2, CPU) compiles this whole step into wrong gradients on a data x fsdp x tensor mesh, while
    # the looped form is exact (reproducer and guard: tests/test_xla_workarounds.py, tests/xla_repro.py
    # `loop_free_step`; end to end: tests/test_train.py::test_losses_agree_across_mesh_shapes).
    micro = jax.tree.map(functools.partial(_split_micro, num_micro), batch)

    def accumulate(carry, xs):
        index, micro_batch = xs
        (loss_sum, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(dropout_key, index))
        return jax.tree.map(jnp.add, carry, (grads, loss_sum, aux)), None

    # The carry has the loss_fn's output structure (ratios included), found without running it.
    shapes = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[0], micro), dropout_key)
    zeros = (jax.tree.map(jnp.zeros_like, params), *jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    sums, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_micro), micro))
    return sums


def _update(tx: optax.GradientTransformation, state: TrainState, grads, finite: jax.Array) -> TrainState:
    """The optimizer step when `finite`; otherwise params and optimizer state stay as they were while
    the step counter (and with it the data and the random keys) moves on."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    return state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )


def _split_micro(num_micro: int, x: jax.Array) -> jax.Array:
    """[B, ...] -> [num_micro, B / num_micro, ...], microbatch i = rows i, i + n, i + 2n, ...

    Taking strided rows keeps every device's microbatch slice on that device: row r of a batch
    sharded on dim 0 lands in microbatch r % n at row r // n, inside the same shard.
    """
    b = x.shape[0]
    if b % num_micro:
        raise ValueError(f"global batch {b} does not split into grad_accum_steps={num_micro} microbatches.")
    return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)


def make_eval_step(loss_fn, *, seed: int, prepare=None):
    """`eval_step(params, batch, batch_index) -> (sums, {})`, deterministic, in the form the runtime's
    evaluation reads: `sums` = {"loss_sum", "count", "correct"} (+ "<name>_sum" and "<name>_count" of the
    loss_fn's ratios, `make_train_step`; `ratio_metrics` reads them) and no per-row outputs.

    `prepare` gets the fixed key `fold_in(key(seed), batch_index)`, so MLM eval masks are the
    same at every evaluation and eval losses are comparable across steps.
    """

    def eval_step(params, batch, batch_index):
        if prepare is not None:
            batch = prepare(jax.random.fold_in(jax.random.key(seed), batch_index), batch)
        loss_sum, (count, correct, ratios) = with_ratios(loss_fn)(params, batch, None)
        sums = {"loss_sum": loss_sum, "count": count, "correct": correct}
        for name, (total, n) in ratios.items():
            sums[f"{name}_sum"], sums[f"{name}_count"] = total, n
        return sums, {}

    return eval_step


def ratio_metrics(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """{"<prefix>/<name>": sum / count} of the ratios in an evaluation's summed `sums` (`make_eval_step`)."""
    names = [k[: -len("_sum")] for k in sums if k.endswith("_sum") and f"{k[: -len('_sum')]}_count" in sums]
    return {f"{prefix}/{n}": sums[f"{n}_sum"] / max(sums[f"{n}_count"], 1.0) for n in names}
