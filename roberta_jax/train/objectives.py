"""Objectives of the train step: the weighted cross-entropy sums every head's loss is made of, and MLM.

A `loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))` returns sums over the batch it
is given; `steps.make_train_step` divides by the count over the whole global batch. `dropout_rng=None`
is deterministic (evaluation). A `prepare(rng, batch) -> batch` runs once on the global batch first.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from roberta_jax.train import masking


def xent_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Summed weighted cross-entropy, weight sum and weighted correct count of integer `labels`.

    logits float32 [..., C], labels int [...], weights float32 [...] (MLM: [B, K, V], [B, K], [B, K]).
    """
    # Against one-hot targets rather than by gathering the label's logit: the gather's gradient (a
    # scatter into the vocabulary axis) comes out wrong from XLA's SPMD partitioner when the
    # vocabulary is split over `tensor` and the batch over both `data` and `fsdp` (jax 0.9.2 and 0.10.2;
    # reproducer and guard: tests/test_xla_workarounds.py, tests/xla_repro.py `label_gather`).
    xent = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(xent * weights), jnp.sum(weights), jnp.sum(correct * weights)


def mlm_prepare(mask_fn, *, static_copies: int = 0, seed: int = 0):
    """Whole-batch step preprocessing for MLM: `mask_fn(rng, input_ids) -> MaskedBatch` adds the
    corrupted inputs and the `positions`/`labels`/`weights` of the predictions.

    With `static_copies` N > 0, batches that carry `row_ids` and `epoch` (int32 [B], the training
    batches of `BatchIterator(..., emit_row_ids=True)`) are masked statically, row by row with the
    keys `masking.static_masked_rngs(seed, row_ids, epoch, N)`; others (evaluation) dynamically.
    """

    def prepare(rng, batch):
        if static_copies and "row_ids" in batch:
            rngs = masking.static_masked_rngs(seed, batch["row_ids"], batch["epoch"], static_copies)
            masked = masking.mask_rows(mask_fn, rngs, batch["input_ids"])
        else:
            masked = mask_fn(rng, batch["input_ids"])
        return dict(batch, **masked._asdict())

    return prepare


def mlm_loss(model: nn.Module):
    """`loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))` at the masked slots;
    the vocabulary projection runs only there."""

    def loss_fn(params, batch, dropout_rng):
        logits = model.apply(
            {"params": params}, batch["input_ids"], batch.get("attention_mask"),
            masked_positions=batch["positions"], segment_ids=batch.get("segment_ids"),
            deterministic=dropout_rng is None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        loss_sum, count, correct = xent_sums(logits, batch["labels"], batch["weights"])
        return loss_sum, (count, correct)

    return loss_fn




def never_masked_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Special ids, and ids below `vocab_size` that no token has (roberta-base's 50261-50263):
    never chosen for prediction, never drawn as random replacements. `tokenizer`: a
    `data.fast_tokenizer.FastTokenizer` (its `all_special_ids` hold CamemBERT's `<s>NOTUSED` & co.)."""
    unused = set(range(vocab_size)) - set(tokenizer.get_vocab().values())
    return tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id} | unused))
