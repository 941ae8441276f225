"""RoBERTa task heads on top of `layers.RobertaModel`, named as HF `transformers` names them.

Each head is a linen module whose parameter tree is `{"roberta": ..., <head>: ...}`, matching
the PyTorch state-dict prefixes (`roberta.`, `lm_head.`, `classifier.`, `qa_outputs.`).
All heads take `input_ids` int [B, L] (MultipleChoice: [B, C, L]) with optional
`attention_mask`, `token_type_ids`, `position_ids` of the same shape, and return float32 logits.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from roberta_jax.model.config import MODEL_TYPES, RobertaConfig
from roberta_jax.model.dropout import Dropout
from roberta_jax.model.layers import ACTIVATIONS, RobertaModel, RobertaPooler, dense, layer_norm
from roberta_jax.model.tpu_attention import Placement

Dtype = Any


class _Head(nn.Module):
    """Shared attributes: the architecture config and the training knobs beside it."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None
    remat: bool | str = False  # a `layers.REMAT_POLICIES` name; True is "full"
    placement: Placement | None = None  # the mesh the step is compiled for: attention's platform and shards

    def encoder(self, add_pooling_layer: bool) -> RobertaModel:
        return RobertaModel(
            self.config,
            self.dtype,
            self.param_dtype,
            add_pooling_layer=add_pooling_layer,
            implementation=self.implementation,
            remat=self.remat,
            placement=self.placement,
            name="roberta",
        )

    @property
    def classifier_dropout(self) -> float:
        c = self.config
        return c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob


class RobertaLMHead(nn.Module):
    """dense -> gelu -> layer_norm -> vocabulary logits (tied to the word embeddings) + own bias."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attend):
        """x [..., H], `attend` maps [..., H] to [..., vocab] with the word embeddings."""
        c = self.config
        x = dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype, "dense")(x)
        # Whole hidden vectors per batch shard before the tied projection: left split over `tensor`
        # (as the kernel's `mlp` axis would leave them), XLA's partitioner (jax 0.10.2) computes wrong
        # gradients for the dense and its input on a data x fsdp x tensor mesh
        # (tests/test_xla_partitioner.py holds the reproducer).
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = ACTIVATIONS["gelu"](x)
        x = layer_norm(c, self.dtype, self.param_dtype, "layer_norm")(x)
        if c.tie_word_embeddings:
            logits = attend(x)
        else:
            logits = nn.DenseGeneral(
                c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(c.initializer_range), ("embed", "vocab")
                ),
                name="decoder",
            )(x)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (c.vocab_size,), self.param_dtype,
        )
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)


class NextSentenceHead(nn.Module):
    """BERT's next-sentence head on `<s>` (HF `BertForPreTraining`'s pooler and `cls.seq_relationship`):
    x [B, L, H] -> dense (H -> H) -> tanh -> `seq_relationship` (H -> 2) -> float32 logits [B, 2]."""

    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        pooled = RobertaPooler(c, self.dtype, self.param_dtype, name="pooler")(x)  # BERT's pooler, as RoBERTa's
        return dense(c, 2, ("mlp", None), self.dtype, self.param_dtype, "seq_relationship")(pooled).astype(jnp.float32)


class RobertaForMaskedLM(_Head):
    """Masked LM. With `masked_positions` int [B, K] only those positions are projected onto the
    vocabulary (logits [B, K, V]); otherwise every position is (logits [B, L, V]). `segment_ids`
    int [B, L]: see `RobertaModel`.

    `next_sentence=True` adds the `NextSentenceHead` (params under "next_sentence") and returns
    (MLM logits, next-sentence logits [B, 2]): the pair input formats' objective. A training knob, not part
    of the architecture: HF's `RobertaForMaskedLM` has no such head, so `hf_io.save_hf` leaves it out."""

    next_sentence: bool = False

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
        masked_positions=None, deterministic: bool = True, segment_ids=None,
    ):
        if isinstance(self, RobertaForCausalLM) != self.config.is_decoder:
            raise ValueError(
                f"{type(self).__name__} needs config.is_decoder={not self.config.is_decoder} "
                "(causal attention is what separates the causal LM from the masked LM)."
            )
        roberta = self.encoder(add_pooling_layer=False)
        x, _ = roberta(input_ids, attention_mask, token_type_ids, position_ids, deterministic, segment_ids)
        nsp = None
        if self.next_sentence:  # on the full sequence: it reads <s>, which the masked gather may leave out
            nsp = NextSentenceHead(self.config, self.dtype, self.param_dtype, name="next_sentence")(x)
        if masked_positions is not None:
            x = jnp.take_along_axis(x, masked_positions[..., None], axis=1)
        logits = RobertaLMHead(self.config, self.dtype, self.param_dtype, name="lm_head")(x, roberta.attend)
        return logits if nsp is None else (logits, nsp)


class RobertaForCausalLM(RobertaForMaskedLM):
    """Left-to-right LM (`config.is_decoder=True`): causal attention, the same LM head."""


class RobertaClassificationHead(nn.Module):
    """The RoBERTa sentence head on `<s>`: dropout -> dense -> tanh -> dropout -> out_proj."""

    config: RobertaConfig
    dropout: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        x = Dropout(self.dropout)(x[:, 0], deterministic=deterministic)
        x = jnp.tanh(dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype, "dense")(x))
        x = Dropout(self.dropout)(x, deterministic=deterministic)
        return dense(c, c.num_labels, ("mlp", None), self.dtype, self.param_dtype, "out_proj")(x)


class RobertaForSequenceClassification(_Head):
    """[B, L] -> logits [B, num_labels]; `num_labels == 1` is regression (see `losses`)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic
        )
        head = RobertaClassificationHead(
            self.config, self.classifier_dropout, self.dtype, self.param_dtype, name="classifier"
        )
        return head(x, deterministic).astype(jnp.float32)


class RobertaForMultipleChoice(_Head):
    """[B, C, L] -> logits [B, C]: the pooled `<s>` of each choice -> dropout -> one logit."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        batch, choices, length = input_ids.shape

        def flat(a):
            return None if a is None else a.reshape(batch * choices, length)

        _, pooled = self.encoder(add_pooling_layer=True)(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), deterministic
        )
        pooled = Dropout(self.config.hidden_dropout_prob)(pooled, deterministic=deterministic)
        c = self.config
        logits = dense(c, 1, ("embed", None), self.dtype, self.param_dtype, "classifier")(pooled)
        return logits.reshape(batch, choices).astype(jnp.float32)


class RobertaForTokenClassification(_Head):
    """[B, L] -> logits [B, L, num_labels]."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic
        )
        x = Dropout(self.classifier_dropout)(x, deterministic=deterministic)
        c = self.config
        return dense(c, c.num_labels, ("embed", None), self.dtype, self.param_dtype, "classifier")(x).astype(
            jnp.float32
        )


class RobertaForQuestionAnswering(_Head):
    """[B, L] -> (start_logits [B, L], end_logits [B, L])."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        x, _ = self.encoder(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic
        )
        c = self.config
        if c.num_labels != 2:
            raise ValueError(f"question answering predicts start and end: num_labels must be 2, not {c.num_labels}.")
        logits = dense(c, 2, ("embed", None), self.dtype, self.param_dtype, "qa_outputs")(x).astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


# HF class names without the model type's prefix -> module classes. `RobertaModel` is the headless encoder.
_HEADS: dict[str, type[nn.Module]] = {
    "Model": RobertaModel,
    "ForMaskedLM": RobertaForMaskedLM,
    "ForCausalLM": RobertaForCausalLM,
    "ForSequenceClassification": RobertaForSequenceClassification,
    "ForMultipleChoice": RobertaForMultipleChoice,
    "ForTokenClassification": RobertaForTokenClassification,
    "ForQuestionAnswering": RobertaForQuestionAnswering,
}
# HF `architectures` names of every model type -> module classes: `RobertaForMaskedLM`,
# `XLMRobertaForMaskedLM` and `CamembertForMaskedLM` are one module.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    prefix + suffix: cls for prefix in MODEL_TYPES.values() for suffix, cls in _HEADS.items()
}


def architecture_name(model: nn.Module) -> str:
    """The HF `architectures` entry of a module instance, named for its config's model type
    (`XLMRobertaForSequenceClassification` for model_type "xlm-roberta")."""
    for suffix, cls in _HEADS.items():
        if type(model) is cls:
            return MODEL_TYPES[model.config.model_type] + suffix
    raise ValueError(f"{type(model).__name__} is not one of {[cls.__name__ for cls in _HEADS.values()]}.")


def dummy_inputs(model: nn.Module) -> jax.Array:
    """Token ids of the rank `model` takes, for `init`: [1, 8] or [1, 2, 8] for multiple choice."""
    shape = (1, 2, 8) if isinstance(model, RobertaForMultipleChoice) else (1, 8)
    return jnp.zeros(shape, jnp.int32)


def init_params(model: nn.Module, rng: jax.Array) -> dict:
    """Freshly initialised params (unboxed) of `model`."""
    return nn.meta.unbox(model.init(rng, dummy_inputs(model))["params"])
