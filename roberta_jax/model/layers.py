"""The RoBERTa encoder in Flax linen: embeddings, self-attention, feed-forward, post-LN layers.

Module and parameter names follow HF `transformers` (`embeddings/word_embeddings`,
`encoder/layer_3/attention/self/query`, `LayerNorm`, ...) so that `hf_io` maps them to PyTorch
names with a rule instead of a table. Every kernel carries logical axis names
(`vocab`, `embed`, `heads`, `mlp`) that `sharding` maps onto the device mesh.

Shapes: B batch, L length, H hidden size, N heads, D head size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from roberta_jax.model import attention, tpu_attention
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.dropout import Dropout

Dtype = Any

# Each keeps only its input for the backward pass (`jax.checkpoint`) and recomputes the rest there:
# autodiff of the exact GELU would keep its erfc term as well, a second [B, L, ffn] array written to
# HBM in the forward pass and read back in the backward; the recomputation is elementwise work that
# fuses into the backward's own.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {name: jax.checkpoint(fn) for name, fn in {
    # HF "gelu" is the exact erf form; "gelu_new" is the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}.items()}


def dense_inits(config: RobertaConfig, axes: tuple[str, str]):
    """(kernel_init, bias_init) as HF initialises a linear layer: normal(initializer_range), zero bias;
    with the kernel's logical `axes` and the bias's (the output axis)."""
    return (nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes),
            nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))


def dense(config: RobertaConfig, features: int, axes: tuple[str, str], dtype, param_dtype, name):
    """`nn.Dense` initialised as HF does (`dense_inits`), with logical axes."""
    kernel_init, bias_init = dense_inits(config, axes)
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, bias_init=bias_init,
                    name=name)


def layer_norm(config: RobertaConfig, dtype, param_dtype, name):
    """LayerNorm whose statistics are computed in float32 whatever `dtype` is."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def position_ids_from_input_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """RoBERTa positions: real tokens count up from `pad_token_id + 1`, padding stays at `pad_token_id`.

    Args:
      input_ids: int [B, L].
    Returns:
      int32 [B, L]; for pad id 1 and `a b <pad>`: `2 3 1`.
    """
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + pad_token_id


def segment_position_ids(input_ids: jax.Array, segment_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """`position_ids_from_input_ids` restarted at every segment (document) of a packed row.

    Args:
      input_ids, segment_ids: int [B, L]; a segment is a run of equal segment ids.
    Returns:
      int32 [B, L]; for pad id 1, segments `0 0 0 1 1` of real tokens: `2 3 4 2 3`.
    """
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    counts = jnp.cumsum(not_pad, axis=-1)
    index = jnp.arange(input_ids.shape[-1])
    starts = segment_ids != jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)  # each token's segment start
    before = jnp.take_along_axis(counts - not_pad, first, axis=-1)  # real tokens before that start
    return (counts - before) * not_pad + pad_token_id


class Embed(nn.Embed):
    """`nn.Embed` whose lookups keep their gradients cheap on accelerators.

    The word table is gathered in its parameter dtype (float32) and cast after, so the
    gradient's scatter-add runs in float32, where GPUs have native atomic adds (bfloat16 ones
    are emulated). Small tables (positions, token types; `one_hot=True`) are looked up by a
    one-hot matmul instead: their few rows are hit by every token, and a scatter-add that
    collides that often serialises, while the matmul's gradient is one more small matmul.
    """

    one_hot: bool = False

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.one_hot:
            table = self.embedding.astype(self.dtype)
            one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=self.dtype)
            return jnp.dot(one_hot, table, precision=jax.lax.Precision.HIGHEST)
        return jnp.take(self.embedding, inputs, axis=0).astype(self.dtype)


class RobertaEmbeddings(nn.Module):
    """Word + learned absolute position + token type embeddings, then LayerNorm and dropout."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config

        def embed(num, name, one_hot=False):
            return Embed(
                num,
                c.hidden_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.normal(c.initializer_range), ("vocab", "embed")
                ),
                one_hot=one_hot,
                name=name,
            )

        self.word_embeddings = embed(c.vocab_size, "word_embeddings")
        self.position_embeddings = embed(c.max_position_embeddings, "position_embeddings", one_hot=True)
        self.token_type_embeddings = embed(c.type_vocab_size, "token_type_embeddings", one_hot=True)
        self.LayerNorm = layer_norm(c, self.dtype, self.param_dtype, "LayerNorm")
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids=None, position_ids=None, deterministic=True):
        """int [B, L] ids (and optional token types / positions) -> [B, L, H]."""
        if position_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, self.config.pad_token_id)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, x: jax.Array) -> jax.Array:
        """[..., H] -> [..., vocab] logits against the word embeddings (the tied MLM decoder)."""
        return self.word_embeddings.attend(x)


class HeadsProjection(nn.Module):
    """`dense` to the hidden size with its output split into heads, [B, L, H] -> [B, L, N, D]: the same
    parameters (kernel [H, H] on ("embed", "heads"), bias [H]), the matmul written with the heads as their
    own output dimensions. XLA then lays its result out heads-first for the TPU attention kernel, where a
    [B, L, H] result reshaped into heads was copied into that layout and its gradient copied back: 11 GB
    of HBM traffic per microbatch of roberta-base on the v6e-64 plan."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        kernel_init, bias_init = dense_inits(c, ("embed", "heads"))
        kernel = self.param("kernel", kernel_init, (x.shape[-1], c.hidden_size), self.param_dtype)
        bias = self.param("bias", bias_init, (c.hidden_size,), self.param_dtype)
        heads = (c.num_attention_heads, c.head_dim)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return jnp.einsum("blh,hnd->blnd", x, kernel.reshape(-1, *heads)) + bias.reshape(heads)


class RobertaSelfAttention(nn.Module):
    """Multi-head attention: q/k/v projections and `jax.nn.dot_product_attention` or the TPU kernel.

    `implementation`: "splash" runs the Pallas TPU kernel (`tpu_attention`), "cudnn" / "xla" are passed
    to `jax.nn.dot_product_attention`; None picks with `attention.attention_implementation` for the platform of
    `placement` (the mesh the step is compiled for, under which the kernel runs per shard). Attention-
    probability dropout needs the probabilities, so while it is active (training with
    `attention_probs_dropout_prob > 0`) the softmax is written out; the same happens when the
    `intermediates` collection is mutable, which records the attention weights [B, N, L, L] for inspection.
    """

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None
    placement: tpu_attention.Placement | None = None

    @nn.compact
    def __call__(self, x, mask: attention.AttentionMask, deterministic=True):
        """x [B, L, H], `mask` the padding and segments (an `AttentionMask`) -> [B, L, H].

        `config.is_decoder` adds the causal mask.
        """
        c = self.config
        b, length, _ = x.shape
        q, k, v = (HeadsProjection(c, self.dtype, self.param_dtype, name=n)(x) for n in ("query", "key", "value"))
        dropout = 0.0 if deterministic else c.attention_probs_dropout_prob
        if dropout > 0.0 or self.is_mutable_collection("intermediates"):
            scores = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32) / jnp.sqrt(c.head_dim)
            allowed = jnp.ones(scores.shape[-2:], bool) if mask.is_empty else mask.dense()
            if c.is_decoder:
                allowed = allowed & jnp.tril(jnp.ones(scores.shape[-2:], bool))
            scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
            weights = jax.nn.softmax(scores, axis=-1)
            self.sow("intermediates", "attention_weights", weights)
            weights = Dropout(dropout)(weights, deterministic=deterministic)
            out = jnp.einsum("bnqk,bknd->bqnd", weights.astype(self.dtype), v)
        else:
            out = attention.fused(q, k, v, mask, c.is_decoder, self.implementation, self.placement)
        return out.reshape(b, length, c.hidden_size)


class RobertaAttention(nn.Module):
    """Self-attention, output projection, dropout, residual and post-LayerNorm."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None
    placement: tpu_attention.Placement | None = None

    @nn.compact
    def __call__(self, x, mask, deterministic=True):
        c = self.config
        h = RobertaSelfAttention(c, self.dtype, self.param_dtype, self.implementation, self.placement, name="self")(
            x, mask, deterministic
        )
        return RobertaSelfOutput(c, self.dtype, self.param_dtype, "heads", name="output")(x, h, deterministic)


class RobertaSelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .): the sub-layer output shared by attention and FFN."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    in_axis: str = "heads"

    @nn.compact
    def __call__(self, residual, h, deterministic=True):
        c = self.config
        h = dense(c, c.hidden_size, (self.in_axis, "embed"), self.dtype, self.param_dtype, "dense")(h)
        h = Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        out = layer_norm(c, self.dtype, self.param_dtype, "LayerNorm")(h + residual)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class RobertaIntermediate(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = dense(c, c.intermediate_size, ("embed", "mlp"), self.dtype, self.param_dtype, "dense")(x)
        h = ACTIVATIONS[c.hidden_act](h)
        return nn.with_logical_constraint(h, ("batch", "length", "mlp"))


class RobertaLayer(nn.Module):
    """One post-LN transformer layer: attention block then feed-forward block."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None
    placement: tpu_attention.Placement | None = None

    @nn.compact
    def __call__(self, x, mask, deterministic=True):
        c = self.config
        x = RobertaAttention(c, self.dtype, self.param_dtype, self.implementation, self.placement, name="attention")(
            x, mask, deterministic
        )
        h = RobertaIntermediate(c, self.dtype, self.param_dtype, name="intermediate")(x)
        return RobertaSelfOutput(c, self.dtype, self.param_dtype, "mlp", name="output")(x, h, deterministic)


# What each layer keeps for the backward pass (`jax.checkpoint_policies`); the rest is recomputed.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: everything the backward pass reads is kept
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer's input; ~1/3 more compute
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the projections' outputs
    # the projections' outputs, moved to host memory until the backward pass needs them
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def remat_policy(remat: bool | str) -> str:
    """A `remat` setting as a name of `REMAT_POLICIES`: True is "full", False or "" is "none"."""
    name = {True: "full", False: "none", "": "none"}.get(remat, remat)
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is not a policy; choose from {sorted(REMAT_POLICIES)}")
    return name


class RobertaEncoder(nn.Module):
    """`num_hidden_layers` layers named `layer_0`, `layer_1`, ...; `remat` (a `REMAT_POLICIES` name, or a
    bool) chooses what each keeps for the backward pass."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None
    remat: bool | str = False
    placement: tpu_attention.Placement | None = None

    @nn.compact
    def __call__(self, x, mask, deterministic=True):
        policy = remat_policy(self.remat)
        # `deterministic` (argument 3, counting self) switches dropout: it must stay a Python bool.
        layer_cls = RobertaLayer if policy == "none" else nn.remat(
            RobertaLayer, static_argnums=(3,), policy=REMAT_POLICIES[policy])
        for i in range(self.config.num_hidden_layers):
            x = layer_cls(self.config, self.dtype, self.param_dtype, self.implementation, self.placement,
                          name=f"layer_{i}")(x, mask, deterministic)
        return x


class RobertaPooler(nn.Module):
    """tanh(dense(hidden of the first token)): [B, L, H] -> [B, H]."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        return jnp.tanh(dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype, "dense")(x[:, 0]))


class RobertaModel(nn.Module):
    """The RoBERTa encoder: embeddings -> layers (-> pooler).

    Returns (sequence_output [B, L, H], pooled_output [B, H] or None).
    """

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    add_pooling_layer: bool = True
    implementation: str | None = None
    remat: bool | str = False
    placement: tpu_attention.Placement | None = None  # the mesh the step is compiled for (attention's choice)

    def setup(self):
        c = self.config
        self.embeddings = RobertaEmbeddings(c, self.dtype, self.param_dtype)
        self.encoder = RobertaEncoder(c, self.dtype, self.param_dtype, self.implementation, self.remat, self.placement)
        self.pooler = RobertaPooler(c, self.dtype, self.param_dtype) if self.add_pooling_layer else None

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        deterministic: bool = True,
        segment_ids=None,
    ):
        """`segment_ids` int [B, L] (packed rows whose documents must not see each other): attention
        stays within a segment and positions restart at each segment's first token."""
        if segment_ids is not None and position_ids is None:
            position_ids = segment_position_ids(input_ids, segment_ids, self.config.pad_token_id)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        # No mask means every token is attended to, as in HF; full packed rows need none, which
        # keeps the fused attention kernels on their fastest path.
        x = self.encoder(x, attention.AttentionMask(attention_mask, segment_ids), deterministic)
        pooled = self.pooler(x) if self.pooler is not None else None
        return x, pooled

    def attend(self, x: jax.Array) -> jax.Array:
        return self.embeddings.attend(x)
