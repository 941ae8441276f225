"""AdamW with RoBERTa's schedule (linear warmup, then linear decay) from a config's `optimizer` section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import optax
from flax import traverse_util


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


