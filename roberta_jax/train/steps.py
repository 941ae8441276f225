"""The pretraining step, importable and pure: state, optimizer, `train_step`, `eval_step`.

One compiled program per step: a whole-batch `prepare` (for MLM, dynamic masking with key
fold_in(key(seed), step)) -> forward (MLM: the vocabulary projected only at masked positions) ->
backward, accumulated over microbatches -> a global-norm check that skips non-finite updates ->
AdamW. Pretraining and fine-tuning use the same step with different `loss_fn`s.

Losses are sums over predictions divided by the number of predictions in the whole global
batch, so the result does not depend on how the batch is split into microbatches or devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util
from jax.sharding import Mesh

from roberta_jax.model import hf_io
from roberta_jax.train import sharding
from roberta_jax.train.masking import masked_rng


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


def xent_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Summed weighted cross-entropy, weight sum and weighted correct count of integer `labels`.

    logits float32 [..., C], labels int [...], weights float32 [...] (MLM: [B, K, V], [B, K], [B, K]).
    """
    # Against one-hot targets rather than by gathering the label's logit: the gather's gradient (a
    # scatter into the vocabulary axis) comes out wrong from XLA's SPMD partitioner when the
    # vocabulary is split over `tensor` and the batch over both `data` and `fsdp`.
    xent = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(xent * weights), jnp.sum(weights), jnp.sum(correct * weights)


def mlm_prepare(mask_fn):
    """Whole-batch step preprocessing for MLM: `mask_fn(rng, input_ids) -> MaskedBatch` adds the
    corrupted inputs and the `positions`/`labels`/`weights` of the predictions."""

    def prepare(rng, batch):
        masked = mask_fn(rng, batch["input_ids"])
        return dict(batch, **masked._asdict())

    return prepare


def mlm_loss(model: nn.Module):
    """`loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))` at the masked slots;
    the vocabulary projection runs only there."""

    def loss_fn(params, batch, dropout_rng):
        logits = model.apply(
            {"params": params}, batch["input_ids"], batch.get("attention_mask"),
            masked_positions=batch["positions"], deterministic=dropout_rng is None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        loss_sum, count, correct = xent_sums(logits, batch["labels"], batch["weights"])
        return loss_sum, (count, correct)

    return loss_fn


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
    batch it is given; the step divides by the count over the whole global batch.
    `prepare(rng, batch) -> batch` runs once on the global batch before it is split into
    `num_micro` microbatches (MLM masking), so its result does not depend on `num_micro`.
    Batches are dicts of arrays with the global batch first; float32 gradients are summed
    over the microbatches.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        prepare_rng, dropout_key = jax.random.split(masked_rng(seed, state.step))
        if prepare is not None:
            batch = prepare(prepare_rng, batch)
        # One microbatch goes through the loop too: without it, XLA's SPMD partitioner (jax 0.10.2,
        # CPU) compiled this whole step into wrong gradients on a data x fsdp x tensor mesh
        # (tests/test_train.py::test_losses_agree_across_mesh_shapes), while the looped form is exact.
        micro = jax.tree.map(functools.partial(_split_micro, num_micro), batch)

        def accumulate(carry, xs):
            index, micro_batch = xs
            (loss_sum, (count, correct)), grads = grad_fn(
                state.params, micro_batch, jax.random.fold_in(dropout_key, index)
            )
            return jax.tree.map(jnp.add, carry, (grads, loss_sum, count, correct)), None

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
        # (and with it the data and the random keys) moves on.
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
            f"train/{accuracy_name}": correct / denominator,
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


def make_eval_step(loss_fn, *, seed: int, prepare=None):
    """`eval_step(params, batch, batch_index) -> {"loss_sum", "count", "correct"}`, deterministic.

    `prepare` gets the fixed key `fold_in(key(seed), batch_index)`, so MLM eval masks are the
    same at every evaluation and eval losses are comparable across steps.
    """

    def eval_step(params, batch, batch_index):
        if prepare is not None:
            batch = prepare(jax.random.fold_in(jax.random.key(seed), batch_index), batch)
        loss_sum, (count, correct) = loss_fn(params, batch, None)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}

    return eval_step
