"""Attention on TPU through the Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu`).

Splash attention is flash attention for TPU: it walks the keys in blocks with an online softmax, so the
[B, N, L, L] scores are never written to HBM, and the backward pass recomputes them from q, k, v and the
per-row log-sum-exp. `attention.attention_implementation` picks it (the name "splash") on TPU where
`applies`; this module turns the model's tensors and masks into the kernel's form:

- q, k, v [B, L, N, D] -> per example [N, L, D] (the kernel is vmapped over the batch); the kernel does
  not scale, so q is multiplied by 1/sqrt(D) first.
- The padding mask and the segment ids become the kernel's `SegmentIds(q, kv)`: a query attends to a key
  when their ids are equal (`kernel_segment_ids`). Causal attention (`is_decoder`) is the kernel's
  static `CausalMask`, whose fully masked blocks are skipped.
- Under a mesh (`Placement`) the kernel runs once per shard through `jax.shard_map`: a Mosaic custom call
  has no SPMD partitioning rule, so without it XLA would gather the whole batch onto every device.

`INTERPRET = True` runs the kernel in the Pallas interpreter, on any backend (the CPU tests do).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import Mesh, PartitionSpec

# The name of the kernel's saved output and log-sum-exp (`jax.ad_checkpoint.checkpoint_name`).
RESIDUALS = "splash_residuals"
# Run the kernel in the Pallas interpreter instead of compiling it for a TPU (tests on CPU set this).
INTERPRET = False
# Query and key block lengths tried in order: the largest that divides the row length is used.
BLOCK_SIZES = (512, 256, 128)
# The head sizes the kernel takes: the TPU's 128-lane vector registers hold one head or half of one.
HEAD_DIM_MULTIPLE = 64
# The kv segment id of padding keys: no query has it, so no query attends to a padding key.
PAD_SEGMENT = int(np.iinfo(np.int32).min)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The mesh a step is compiled for and the mesh axes that split attention's batch and heads.

    Its devices' platform ("tpu" also when compiling for a TPU slice from a CPU host) decides the
    automatic choice of attention, and the kernel runs per shard of `batch_axes` x `head_axes`.
    """

    mesh: Mesh
    batch_axes: tuple[str, ...] = ()
    head_axes: tuple[str, ...] = ()

    @property
    def platform(self) -> str:
        return self.mesh.devices.flat[0].platform

    def spec(self, num_heads: int) -> tuple[PartitionSpec, PartitionSpec]:
        """(spec of [B, L, N, D], spec of [B, L]); heads stay whole where the head axes do not divide them."""
        heads = self.head_axes if num_heads % _size(self.mesh, self.head_axes) == 0 else ()
        batch = self.batch_axes or None
        return PartitionSpec(batch, None, heads or None, None), PartitionSpec(batch, None)


def _size(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def applies(head_dim: int, length: int) -> bool:
    """Whether the kernel takes rows of `length` tokens and heads of `head_dim`: the rows a multiple of the
    smallest block (128), the heads a multiple of `HEAD_DIM_MULTIPLE`."""
    return length % BLOCK_SIZES[-1] == 0 and head_dim % HEAD_DIM_MULTIPLE == 0


def kernel_segment_ids(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> tuple | None:
    """The padding mask and segment ids as the kernel's (q, kv) segment ids, int32 [B, L] each; None when
    neither is given.

    A query attends to a key when their ids are equal, so the kv ids are the segment ids (0 without them)
    with padding keys set to `PAD_SEGMENT`, which no query has: exactly the keys `attention.attention_mask_4d`
    allows. Padding queries keep their segment's id and attend as in XLA (to the real keys they may see).
    A query that may see no key at all (a padding token alone in its segment) gets the mean of the values
    the kernel visited, as XLA gives the mean of all values: finite, and read by nothing that matters.
    """
    if attention_mask is None and segment_ids is None:
        return None
    shape = (attention_mask if segment_ids is None else segment_ids).shape
    q = jnp.zeros(shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    kv = q if attention_mask is None else jnp.where(attention_mask.astype(bool), q, PAD_SEGMENT)
    return q, kv


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array | None = None,
                     segment_ids: jax.Array | None = None, is_causal: bool = False,
                     placement: Placement | None = None) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v through the splash kernel: what `jax.nn.dot_product_attention` computes.

    Args:
      q, k, v: [B, L, N, D], L a multiple of 128 and D of `HEAD_DIM_MULTIPLE` (`applies`).
      attention_mask: int or bool [B, L], 0 at padding: padding keys are attended to by no query.
      segment_ids: int [B, L]: a query attends only to keys of its own segment.
      is_causal: a query attends only to keys at or before its position.
      placement: the mesh to run per shard on; None runs on the whole arrays.
    Returns:
      [B, L, N, D] in q's dtype.
    """
    _, length, n, d = q.shape
    if not applies(d, length):
        raise ValueError(f"splash attention needs rows a multiple of {BLOCK_SIZES[-1]} tokens and heads a multiple "
                         f"of {HEAD_DIM_MULTIPLE}, got length {length}, head size {d}; use attention_implementation "
                         "'xla' (or '' to choose automatically)")
    segments = kernel_segment_ids(attention_mask, segment_ids)
    attend = functools.partial(_attend, is_causal=is_causal)
    if placement is not None and _size(placement.mesh, placement.batch_axes + placement.head_axes) > 1:
        qkv_spec, ids_spec = placement.spec(n)
        attend = jax.shard_map(attend, mesh=placement.mesh, in_specs=(qkv_spec,) * 3 + (ids_spec,),
                               out_specs=qkv_spec, check_vma=False)
    return attend(q, k, v, segments)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, segments: tuple | None, is_causal: bool) -> jax.Array:
    """The kernel on one shard: q, k, v [b, L, n, D], segments None or (q, kv) int32 [b, L] -> [b, L, n, D]."""
    _, length, n, d = q.shape
    block = next(s for s in BLOCK_SIZES if length % s == 0)
    head_mask = splash_mask.CausalMask((length, length)) if is_causal else splash_mask.FullMask((length, length))
    kernel = splash.make_splash_mha(
        splash_mask.MultiHeadMask([head_mask] * n),
        block_sizes=splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                      block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                      block_kv_dq=block),
        head_shards=1, q_seq_shards=1, interpret=INTERPRET, residual_checkpoint_name=RESIDUALS,
    )
    # The scaled, heads-first copies the kernel reads [b, n, L, D] are made outside the checkpoint, so they are
    # what it keeps as its inputs, with the kernel's output and log-sum-exp: q, k, v as they came are not
    # kept beside them, and the backward pass does not make the copies again (reading q, k, v and writing
    # them padded, a head of 64 filling half of the TPU's 128 lanes: 3.6 GB of HBM traffic per microbatch
    # of roberta-base on the v6e-64 plan).
    q = q * jnp.asarray(1 / np.sqrt(d), q.dtype)
    heads_first = [x.transpose(0, 2, 1, 3) for x in (q, k, v)]

    def one_example(q, k, v, ids):  # [n, L, D] each, ids None or ([L], [L])
        return kernel(q, k, v, segment_ids=None if ids is None else splash.SegmentIds(*ids))

    keep = jax.checkpoint_policies.save_only_these_names(RESIDUALS)
    out = _residuals_made_at_once(jax.checkpoint(jax.vmap(one_example), policy=keep))(*heads_first, segments)
    return out.transpose(0, 2, 1, 3)


def _residuals_made_at_once(fn):
    """`fn` with the residuals of its backward pass materialized before its output is used.

    The kernel writes its log-sum-exp into a 128-lane f32 buffer [b, n, L, 128] and slices lane 0 out
    of it for the backward pass. Left to itself, XLA's TPU scheduler puts every layer's slice after the
    whole forward pass, so each layer's 128-lane buffer stays alive until then: 32 MiB per layer for 8
    rows of 512 in roberta-large, 0.75 GiB over 24 layers. An optimization barrier over the output and
    the residuals together makes the slice happen before the next layer reads the output.
    """

    @jax.custom_vjp
    def call(*args):
        return fn(*args)

    def forward(*args):
        out, pullback = jax.vjp(fn, *args)
        return jax.lax.optimization_barrier((out, pullback))

    def backward(pullback, cotangent):
        return pullback(cotangent)

    call.defvjp(forward, backward)
    return call
