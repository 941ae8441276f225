"""AdamW with RoBERTa's schedule from a config's `optimizer` section.

`optimizer.schedule` picks the decay after the linear warmup: "linear" (the default, the paper's) or
"polynomial", fairseq's `polynomial_decay` (lr = (peak - end) * (1 - t)^power + end over the decay
steps' fraction t, `end_lr` after `total_steps`); power 1 is the linear decay. `grad_clip_norm` > 0
clips the gradient to that global norm before AdamW (0: no clipping, the default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import optax
from flax import traverse_util

SCHEDULES = ("linear", "polynomial")


def learning_rate_schedule(
    peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0, schedule: str = "linear",
    power: float = 1.0,
):
    """Linear warmup from 0 to `peak_lr`, then decay to `end_lr` at `total_steps`: linear, or fairseq's
    polynomial decay of `power` (`schedule="polynomial"`)."""
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "linear":
        decay = optax.linear_schedule(peak_lr, end_lr, decay_steps)
    elif schedule == "polynomial":
        decay = optax.polynomial_schedule(peak_lr, end_lr, power, decay_steps)
    else:
        raise ValueError(f"optimizer.schedule={schedule!r}; expected one of {SCHEDULES}.")
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)), decay], [warmup_steps])


def decay_mask(params) -> Any:
    """Weight decay on kernels and embeddings, not on biases or LayerNorm scales."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] not in ("bias", "scale") for k in flat})


def make_optimizer(opt) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with the warmup/decay schedule from the `optimizer` config section, after optional clipping."""
    schedule = learning_rate_schedule(
        opt.peak_lr, opt.warmup_steps, opt.total_steps, opt.get("end_lr", 0.0), opt.get("schedule", "linear"),
        opt.get("power", 1.0),
    )
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


