"""Objectives of the train step: the weighted cross-entropy sums every head's loss is made of, MLM, and MLM
with next-sentence prediction (the pair input formats).

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
        loss_sum, count, correct = xent_sums(_forward(model, params, batch, dropout_rng), batch["labels"],
                                             batch["weights"])
        return loss_sum, (count, correct)

    return loss_fn


def nsp_prepare(prepare):
    """MLM's `prepare`, then `nsp_weights` float32 [B] for the pair formats' batches (`nsp_labels` int [B],
    negative on filler rows): each pair weighs (masked tokens in the global batch) / (pairs in it). The
    step divides every loss sum by the masked-token count, so the NSP part comes out as the mean over the
    pairs and the loss is BERT's: mean MLM loss + mean NSP loss, whatever the microbatches or the mesh."""

    def prepare_with_nsp(rng, batch):
        batch = prepare(rng, batch)
        pairs = (batch["nsp_labels"] >= 0).astype(jnp.float32)
        scale = jnp.sum(batch["weights"]) / jnp.maximum(jnp.sum(pairs), 1.0)
        return dict(batch, nsp_weights=pairs * scale)

    return prepare_with_nsp


def mlm_nsp_loss(model: nn.Module):
    """`loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct, ratios))` of a
    `RobertaForMaskedLM(next_sentence=True)` on batches of `nsp_prepare`: MLM's sums plus the next-sentence
    cross-entropy weighted by `nsp_weights`; `count` and `correct` are MLM's, `ratios` the unweighted
    "mlm_loss", "nsp_loss" and "nsp_accuracy" sums over the pairs (`steps.make_train_step` logs them)."""

    def loss_fn(params, batch, dropout_rng):
        logits, nsp_logits = _forward(model, params, batch, dropout_rng)
        mlm_sum, count, correct = xent_sums(logits, batch["labels"], batch["weights"])
        labels = jnp.maximum(batch["nsp_labels"], 0)  # filler rows weigh 0 anyway
        weighted, _, _ = xent_sums(nsp_logits, labels, batch["nsp_weights"])
        nsp_sum, num_pairs, nsp_correct = xent_sums(nsp_logits, labels, (batch["nsp_labels"] >= 0).astype(jnp.float32))
        ratios = {"mlm_loss": (mlm_sum, count), "nsp_loss": (nsp_sum, num_pairs),
                  "nsp_accuracy": (nsp_correct, num_pairs)}
        return mlm_sum + weighted, (count, correct, ratios)

    return loss_fn


def _forward(model: nn.Module, params, batch, dropout_rng):
    """The model's logits at the masked slots (and with the next-sentence head, its logits [B, 2])."""
    return model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        masked_positions=batch["positions"], segment_ids=batch.get("segment_ids"),
        deterministic=dropout_rng is None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
    )


def never_masked_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Special ids, and ids below `vocab_size` that no token has (roberta-base's 50261-50263):
    never chosen for prediction, never drawn as random replacements. `tokenizer`: a
    `data.fast_tokenizer.FastTokenizer` (its `all_special_ids` hold CamemBERT's `<s>NOTUSED` & co.)."""
    unused = set(range(vocab_size)) - set(tokenizer.get_vocab().values())
    return tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id} | unused))
