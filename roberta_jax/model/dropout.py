"""Dropout with cheap random bits: four 16-bit uniforms from each Threefry hash.

`nn.Dropout` draws `jax.random.bernoulli`, which under JAX's partitionable Threefry spends one
whole threefry2x32 hash (20 rounds of integer arithmetic) on every element. RoBERTa-base drops
about 25 activations of [batch, length, hidden] per step, so on a GPU that integer work is a
visible share of the step. A hash gives 64 random bits; cut into four 16-bit lanes they make four
uniforms, a quarter of the hashes for the same mask.

The counter of each hash is (row, column) of the element's group of four, an iota over the array's
own shape, so the mask is a pure function of (key, shape): the same on one device or on any mesh
the array is sharded over, like partitionable Threefry itself.

16 bits resolve the rate to 1/65536: an element is kept when its lane is at least
`round(rate * 65536)`, and kept values are scaled by the exact keep probability that implies
(0.899994 for rate 0.1), so the expected output still equals the input.

The backward pass draws the mask again from the key (`dropout`'s custom VJP) rather than keeping it:
left to autodiff, every dropout site writes its mask (and XLA its random words) to HBM in the forward
pass and reads it back in the backward, about a byte per element each way at ~25 sites per step. The
hash is integer arithmetic on the vector units, which the matmul-bound step has to spare.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

LANES = 4  # 16-bit uniforms per threefry2x32 hash (two 32-bit words)


def _uniform16(rng: jax.Array, shape: tuple[int, ...]) -> list[jax.Array] | None:
    """`LANES` uint32 arrays of `shape` with its last axis divided by `LANES`, holding independent uniform
    integers in [0, 65536): lane i of group j is element `LANES * j + i` along the last axis. None where
    the key is not Threefry's or the last axis does not split into lanes."""
    if str(rng.dtype) != "key<fry>" or not shape or shape[-1] % LANES:  # key<fry>: threefry2x32
        return None
    k1, k2 = jax.random.key_data(rng)
    groups = (*shape[:-1], shape[-1] // LANES)
    # Counter words: the row (the leading axes flattened, row-major) and the column of the group,
    # built from iotas over the final shape so that every shard computes its own part.
    row = jnp.zeros(groups, jnp.uint32)
    for axis in range(len(shape) - 1):
        stride = np.uint32(math.prod(shape[axis + 1 : -1]))
        row = row + jax.lax.broadcasted_iota(jnp.uint32, groups, axis) * stride
    column = jax.lax.broadcasted_iota(jnp.uint32, groups, len(shape) - 1)
    y1, y2 = threefry2x32_p.bind(k1, k2, row, column)
    low = np.uint32(0xFFFF)
    return [y1 & low, y1 >> 16, y2 & low, y2 >> 16]


def keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """bool mask of `shape` (True = keep) and the exact probability of keeping an element."""
    threshold = round(rate * 65536)
    shape = tuple(shape)
    lanes = _uniform16(rng, shape)
    if lanes is None:  # other generators, or a last axis that does not split into lanes: a draw per element
        keep = jax.random.bits(rng, shape, jnp.uint16) >= threshold
    else:
        # Each lane is compared before the lanes are interleaved: XLA computes the hashes of every dropout
        # site ahead of their consumers and keeps what they give in HBM, a byte per element this way
        # where the 16-bit lanes in their uint32 words took four.
        keep = jnp.stack([lane >= threshold for lane in lanes], axis=-1).reshape(shape)
    return keep, (65536 - threshold) / 65536


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dropout(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
    """x with the elements of `keep_mask(rng, x.shape, rate)` kept and scaled by the keep probability,
    the others zero; 0 < rate < 1. Its gradient redraws the mask from `rng`."""
    return _apply_mask(x, rng, rate)


def _apply_mask(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
    mask, keep_prob = keep_mask(rng, x.shape, rate)
    return jnp.where(mask, x / keep_prob, jnp.zeros_like(x))


def _dropout_forward(x, rng, rate):
    return _apply_mask(x, rng, rate), rng  # the key is the only residual


def _dropout_backward(rate, rng, cotangent):
    return _apply_mask(cotangent, rng, rate), None


dropout.defvjp(_dropout_forward, _dropout_backward)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout(rate)(x, deterministic)`, drawing its mask with `keep_mask`.

    Takes its key from the `dropout` rng collection, as `nn.Dropout` does.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        return dropout(x, self.make_rng(self.rng_collection), self.rate)
