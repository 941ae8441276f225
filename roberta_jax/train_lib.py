"""The pretraining step, importable and pure: state, optimizer, `train_step`, `eval_step`.

One compiled program per step: dynamic masking (key = fold_in(key(seed), step)) -> forward with
the vocabulary projected only at masked positions -> backward, accumulated over microbatches
-> a global-norm check that skips non-finite updates -> AdamW.

Losses are sums over predictions divided by the number of predictions in the whole global
batch, so the result does not depend on how the batch is split into microbatches or devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util
from jax.sharding import Mesh

from roberta_jax import hf_io, sharding
from roberta_jax.masking import masked_rng


class TrainState(struct.PyTreeNode):
    """Everything a checkpoint restores. `nonfinite_streak` counts consecutive skipped updates."""

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0):
    """Linear warmup from 0 to `peak_lr`, then linear decay to `end_lr` at `total_steps`."""
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)),
            optax.linear_schedule(peak_lr, end_lr, max(total_steps - warmup_steps, 1)),
        ],
        [warmup_steps],
    )


def decay_mask(params) -> Any:
    """Weight decay on kernels and embeddings, not on biases or LayerNorm scales."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] not in ("bias", "scale") for k in flat})


def make_optimizer(opt) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with the warmup/linear-decay schedule from the `optimizer` config section."""
    schedule = learning_rate_schedule(opt.peak_lr, opt.warmup_steps, opt.total_steps, opt.get("end_lr", 0.0))
    chain = []
    if opt.get("grad_clip_norm", 0.0):
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(
        optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
            mask=lambda p: decay_mask(nn.meta.unbox(p)),
        )
    )
    return optax.chain(*chain), schedule


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, seed: int):
    """Builds the state directly in its sharding: shapes first, then a jitted init whose outputs
    land where the logical axis rules put them (nothing is materialised on one device first).

    The optimizer is initialised on the boxed params, so Adam's moments carry the same logical
    axis names as the params they follow. Returns (state, state_shardings).
    """

    def boxed_init(rng):
        params = model.init(rng, hf_io.dummy_inputs(model))["params"]
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=tx.init(params), nonfinite_streak=zero,
                          nonfinite_total=zero)

    rng = jax.random.key(seed)
    shardings = sharding.logical_shardings(jax.eval_shape(boxed_init, rng), mesh)
    state = jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings)(rng)
    return state, shardings


def mlm_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Summed cross-entropy, prediction count and correct count over the masked slots.

    logits float32 [B, K, V], labels int [B, K], weights float32 [B, K].
    """
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(xent * weights), jnp.sum(weights), jnp.sum(correct * weights)


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, schedule, mask_fn, *, seed: int, num_micro: int = 1
):
    """The jittable `train_step(state, batch) -> (state, metrics)` for the MLM objective.

    `batch`: {"input_ids": int32 [B, L]} (+ "attention_mask" int32 [B, L]), B the global batch;
    it is split into `num_micro` microbatches whose gradients are summed in float32.
    `mask_fn(rng, input_ids) -> MaskedBatch` is `masking.mask_tokens` with its ids bound.
    """

    def loss_fn(params, inputs, attention_mask, positions, labels, weights, dropout_rng):
        logits = model.apply(
            {"params": params}, inputs, attention_mask, masked_positions=positions,
            deterministic=False, rngs={"dropout": dropout_rng},
        )
        loss_sum, count, correct = mlm_sums(logits, labels, weights)
        return loss_sum, (count, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")  # None for full rows: no mask at all
        mask_rng, dropout_key = jax.random.split(masked_rng(seed, state.step))
        # The whole global batch is masked at once, so the masks do not depend on num_micro.
        masked = mask_fn(mask_rng, input_ids)
        micro = jax.tree.map(
            functools.partial(_split_micro, num_micro),
            (masked.input_ids, attention_mask, masked.positions, masked.labels, masked.weights),
        )

        def accumulate(carry, xs):
            index, (inputs, mask, positions, labels, weights) = xs
            (loss_sum, (count, correct)), grads = grad_fn(
                state.params, inputs, mask, positions, labels, weights, jax.random.fold_in(dropout_key, index)
            )
            sums = jax.tree.map(jnp.add, carry, (grads, loss_sum, count, correct))
            return sums, None

        zeros = (jax.tree.map(jnp.zeros_like, state.params), 0.0, 0.0, 0.0)
        (grads, loss_sum, count, correct), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_micro), micro))
        denominator = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        loss = loss_sum / denominator

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite step leaves params and optimizer state as they were; the step counter
        # (and with it the data and the masking key) moves on.
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = {
            "train/loss": loss,
            "train/mlm_accuracy": correct / denominator,
            "train/learning_rate": schedule(state.step),
            "train/grad_norm": grad_norm,
            "train/param_norm": optax.tree.norm(new_state.params),
            "train/num_predictions": count,
            "train/skipped_updates": new_state.nonfinite_total,
            "train/nonfinite_streak": new_state.nonfinite_streak,
        }
        return new_state, metrics

    return train_step


def _split_micro(num_micro: int, x: jax.Array) -> jax.Array:
    """[B, ...] -> [num_micro, B / num_micro, ...], microbatch i = rows i, i + n, i + 2n, ...

    Taking strided rows keeps every device's microbatch slice on that device: row r of a batch
    sharded on dim 0 lands in microbatch r % n at row r // n, inside the same shard.
    """
    b = x.shape[0]
    if b % num_micro:
        raise ValueError(f"global batch {b} does not split into grad_accum_steps={num_micro} microbatches.")
    return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)


def make_eval_step(model: nn.Module, mask_fn, *, seed: int):
    """`eval_step(params, batch, batch_index) -> sums` with fixed masks: the key is
    `fold_in(key(seed), batch_index)`, so eval loss is comparable across steps."""

    def eval_step(params, batch, batch_index):
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        masked = mask_fn(jax.random.fold_in(jax.random.key(seed), batch_index), input_ids)
        logits = model.apply({"params": params}, masked.input_ids, attention_mask, masked_positions=masked.positions)
        loss_sum, count, correct = mlm_sums(logits, masked.labels, masked.weights)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}

    return eval_step
