"""Which keys each query attends to, and which attention implementation computes it.

The layers state a mask as the inputs give it (`AttentionMask`: padding and segment ids); each
implementation builds its own form from it: the dense bool mask of `jax.nn.dot_product_attention` (XLA,
cuDNN) or the splash kernel's segment ids (`tpu_attention`). `attention_implementation` picks the
implementation for the platform a step is compiled for; `fused` runs it.

Shapes: B batch, L length, N heads, D head size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from roberta_jax.model import tpu_attention


def attention_mask_4d(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> jax.Array | None:
    """The `mask` of `jax.nn.dot_product_attention`, bool (True = may attend): [B, 1, 1, L] from the
    padding mask int [B, L], [B, 1, L, L] block-diagonal when `segment_ids` int [B, L] are given (a token
    attends only to its own segment), None when neither is."""
    mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        mask = same if mask is None else same & mask
    return mask


class AttentionMask(NamedTuple):
    """Which keys each query may attend to, as the inputs state it; each attention implementation builds
    its own form from it (`dense` for XLA and cuDNN, the kernel's segment ids for splash).

    padding: int [B, L], 0 at padding tokens (keys no query attends to), or None.
    segment_ids: int [B, L], a query attends only to its own segment's keys, or None.
    """

    padding: jax.Array | None = None
    segment_ids: jax.Array | None = None

    @property
    def is_empty(self) -> bool:
        return self.padding is None and self.segment_ids is None

    def dense(self) -> jax.Array | None:
        """`attention_mask_4d`: bool [B, 1, 1, L] or [B, 1, L, L], or None."""
        return attention_mask_4d(self.padding, self.segment_ids)


def attention_implementation(
    requested: str | None, dtype, head_dim: int, masked: bool, backend: str | None = None,
    length: int | None = None,
) -> str:
    """The attention to run: `requested` ("splash", or "cudnn" / "xla" for `jax.nn.dot_product_attention`)
    when given (splash only for shapes it takes: XLA for others, such as the short rows `init` traces);
    otherwise (None or "") a fused kernel where one applies, XLA's elsewhere.

    On TPU, the Pallas splash-attention kernel (`tpu_attention`) applies to rows of `length` a multiple of
    128 and head sizes a multiple of 64, with or without padding and segment ids. cuDNN's applies on a GPU,
    for bfloat16/float16, head sizes that are multiples of 8 up to 128, and rows without padding (`masked`
    False: full packed pretraining rows). `backend` is the platform the step is compiled for (the mesh's;
    default `jax.default_backend()`). JAX itself picks XLA when asked to choose, which writes out the
    [B, N, L, L] scores.
    """
    splash = length is not None and tpu_attention.applies(head_dim, length)
    if requested:
        return "xla" if requested == "splash" and not splash else requested
    backend = backend or jax.default_backend()
    if backend == "tpu" and splash:
        return "splash"
    fused_dtype = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend == "gpu" and fused_dtype and head_dim % 8 == 0 and head_dim <= 128 and not masked:
        return "cudnn"
    return "xla"


def fused(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, is_causal: bool,
          requested: str | None = None, placement: tpu_attention.Placement | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v without the probabilities: q, k, v [B, L, N, D] -> [B, L, N, D], through the
    implementation `attention_implementation` picks for `requested` on `placement`'s platform (the mesh the
    step is compiled for; the splash kernel runs per shard of it)."""
    _, length, _, head_dim = q.shape
    backend = placement.platform if placement is not None else None
    implementation = attention_implementation(requested, q.dtype, head_dim, not mask.is_empty, backend, length)
    if implementation == "splash":
        return tpu_attention.splash_attention(q, k, v, mask.padding, mask.segment_ids, is_causal, placement)
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(), is_causal=is_causal,
                                        implementation=implementation)
