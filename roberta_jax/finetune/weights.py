"""Fine-tuning pieces for `finetune.py`: initial weights, task data as batches, and each task's loss,
predictions and metrics around the pretraining step machinery (`train_lib`).

    data = load_task_data(config, tokenizer)                       # examples and features of both splits
    arch = initial_config("runs/base").replace(**head_overrides(config, data))
    state, _ = steps.create_train_state(model, tx, mesh, seed)  # model = HEADS[task] class on `arch`
    params, report = load_initial("runs/base", state.params)       # a pretraining workdir or an HF directory
    batches = FeatureBatches(data.arrays("train"), global_batch_size=32, seed=0)
    loss_fn = task_loss(config.task, model, regression=False)     # (params, batch, rng) -> (loss_sum, (count, correct))
    sums, outputs = task_eval_step(config.task, model)(params, batch)  # eval loss sums; what compute_metrics reads

Every batch carries `weights` float32 [B]: 1 for an example, 0 for a row that only fills an evaluation
batch to its static shape; losses and counts are weighted by it, so padding rows change nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from roberta_jax.data.batches import RowBatches
from roberta_jax.finetune import tasks
from roberta_jax.finetune.tasks import ner
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.train import checkpoint, steps

PRETRAINING_MODEL_CONFIG = "model_config.json"  # written by train.py beside its checkpoints

HEADS = {
    "classification": "RobertaForSequenceClassification",
    "ner": "RobertaForTokenClassification",
    "qa": "RobertaForQuestionAnswering",
    "multiple_choice": "RobertaForMultipleChoice",
}
# The feature arrays a step needs besides `input_ids` and `attention_mask`.
TARGETS = {
    "classification": ("labels",),
    "ner": ("labels",),
    "qa": ("start_positions", "end_positions"),
    "multiple_choice": ("labels",),
}
# What each task's `compute_metrics` returns; `loss` (the eval loss) can be chosen too.
METRICS = {
    "classification": ("accuracy", "f1", "matthews_correlation"),
    "regression": ("pearson", "spearman"),
    "ner": ("precision", "recall", "f1", "accuracy"),
    "qa": ("exact_match", "f1"),
    "multiple_choice": ("accuracy",),
}


# -- Initial weights -------------------------------------------------------------------------


def is_pretraining_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PRETRAINING_MODEL_CONFIG))


def initial_config(init_from: str) -> RobertaConfig:
    """The architecture of `init_from`: an HF directory's `config.json`, or a pretraining workdir's
    `model_config.json`."""
    if not os.path.isdir(init_from):
        raise FileNotFoundError(f"init_from={init_from!r} is not a directory (an HF directory or a pretraining run)")
    if is_pretraining_workdir(init_from):
        return RobertaConfig.from_json_file(os.path.join(init_from, PRETRAINING_MODEL_CONFIG))
    return RobertaConfig.from_json_file(init_from)


def max_length_limit(config: RobertaConfig) -> int:
    """The longest row the model's position table holds: RoBERTa's positions start at pad_token_id + 1."""
    return config.max_position_embeddings - config.pad_token_id - 1


def pretrained_state_dict(init_from: str) -> dict[str, np.ndarray]:
    """{HF name: array} of `init_from`: an HF directory's `model.safetensors`, or the encoder (`roberta.*`;
    the LM head is dropped) of a pretraining workdir's newest checkpoint."""
    if not is_pretraining_workdir(init_from):
        return hf_io.read_safetensors(init_from)
    params, _ = checkpoint.load_params(init_from)
    return hf_io.params_to_state_dict({"roberta": params["roberta"]})


def load_initial(init_from: str, fresh_params: Mapping[str, Any]) -> tuple[dict, hf_io.LoadReport]:
    """The weights of `init_from` (see `pretrained_state_dict`) in the tree of `fresh_params`, the freshly
    initialised params of the head model (from `steps.create_train_state`); the leaves the checkpoint
    lacks (a new task head, the pooler of an MLM checkpoint) keep their fresh value, as `from_pretrained`
    initialises them. Returns (params: loaded leaves as host arrays, the rest as they were; the report
    of missing and unexpected weights, by HF name).

    This is `hf_io.load_hf`'s mapping without its second, host-side init of the whole model: the head
    comes from the state, already in its sharding.
    """
    params, report = hf_io.state_dict_to_params(pretrained_state_dict(init_from), fresh_params)
    if report.mismatched:
        raise ValueError(
            f"weights of {init_from!r} do not fit the task model: {report}. A head fine-tuned for another label "
            "set cannot be reused; start from the encoder (a pretraining run's hf/ or roberta-base)"
        )
    loaded = traverse_util.flatten_dict(params)
    fresh = traverse_util.flatten_dict(fresh_params)
    return traverse_util.unflatten_dict({p: loaded.get(p, v) for p, v in fresh.items()}), report


def tokenizer_dir(init_from: str) -> str:
    """Where the tokenizer of `init_from` is: the directory itself, or a workdir's `tokenizer/` or `hf/`
    (or the `tokenizer.path` its train_config.json names)."""
    if not is_pretraining_workdir(init_from):
        return init_from
    candidates = [os.path.join(init_from, "tokenizer"), os.path.join(init_from, "hf")]
    train_config = os.path.join(init_from, "train_config.json")
    if os.path.isfile(train_config):
        with open(train_config, encoding="utf-8") as f:
            candidates.append(json.load(f).get("tokenizer", {}).get("path", ""))
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "vocab.json")):
            return path
    raise FileNotFoundError(f"no tokenizer in {init_from}/tokenizer or {init_from}/hf; pass --config.tokenizer_path")


# -- Task data -------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskData:
    """Both splits of a task: examples (for metrics) and their features (numpy, one row per input)."""

    train_examples: list
    train_features: dict[str, np.ndarray]
    eval_examples: list
    eval_features: dict[str, np.ndarray]
    label_list: list[str] | None  # classification and ner; None for regression, qa, multiple choice
    model_arrays: tuple[str, ...]  # the feature keys a step reads

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        features = self.train_features if split == "train" else self.eval_features
        return {k: features[k] for k in self.model_arrays}


def load_task_data(config, tokenizer) -> TaskData:
    """Reads, subsets and featurizes `config.data.train_file` and `eval_file` for `config.task`."""
    task, d = tasks.get_task(config.task), config.data
    if config.task == "classification":
        options = dict(text_a=d.text_a or None, text_b=d.text_b or None, label=d.label_column)
        train, dev = (task.load_examples(p, **options) for p in (d.train_file, d.eval_file))
    else:
        train, dev = task.load_examples(d.train_file), task.load_examples(d.eval_file)
    if d.max_train_examples and d.max_train_examples < len(train):
        keep = np.random.default_rng(config.seed).choice(len(train), d.max_train_examples, replace=False)
        train = [train[i] for i in sorted(keep)]
    if d.max_eval_examples:
        dev = dev[: d.max_eval_examples]
    if not train or not dev:
        raise ValueError(f"{d.train_file if not train else d.eval_file} holds no examples")

    label_list = None
    if config.task == "ner" or (config.task == "classification" and not d.regression):
        # Labels of both files, so a label seen only in the dev set still has an id.
        label_list = [s.strip() for s in d.labels.split(",")] if d.labels else task.infer_label_list(train + dev)
    if config.task == "classification":
        kwargs = dict(max_length=d.max_length, label_list=label_list, regression=d.regression)
    elif config.task == "ner":
        kwargs = dict(max_length=d.max_length, label_list=label_list)
    elif config.task == "qa":
        kwargs = dict(max_length=d.max_length, doc_stride=d.doc_stride)
    else:
        kwargs = dict(max_length=d.max_length)
    train_features, dev_features = (task.featurize(e, tokenizer, **kwargs) for e in (train, dev))
    arrays = ("input_ids", "attention_mask", *TARGETS[config.task])
    for name, features in (("train", train_features), ("eval", dev_features)):
        missing = [k for k in arrays if k not in features]
        if missing:
            raise ValueError(f"the {name} file has no labels ({missing}); fine-tuning needs labelled files")
    return TaskData(train, train_features, dev, dev_features, label_list, arrays)


def head_overrides(config, data: TaskData) -> dict[str, Any]:
    """The architecture fields the task decides: the label maps (exported as id2label/label2id),
    `num_labels=1` and `problem_type` for regression, 2 outputs for qa; and the config's dropout."""
    out = dict(config.model)
    if data.label_list is not None:
        out["id2label"] = dict(enumerate(data.label_list))
        if config.task == "classification":
            out["problem_type"] = "single_label_classification"
    elif config.task == "classification":
        out.update(id2label={0: "LABEL_0"}, problem_type="regression")
    elif config.task == "qa":
        out["num_labels"] = 2
    return out


def metric_names(config) -> tuple[str, ...]:
    key = "regression" if config.task == "classification" and config.data.regression else config.task
    return (*METRICS[key], "loss")


# -- Batches -------------------------------------------------------------------------------


class FeatureBatches(RowBatches):
    """Host-local batches of rows of equal-length feature arrays, plus `weights` float32 [B_local]; resumable.

    The batching rules (epoch order, host shares, state) are `roberta_jax.data.RowBatches`'s, whose keyword
    arguments these are. An incomplete final batch is dropped (`drop_remainder`, training) or filled
    with copies of a real row of weight 0 (evaluation: a copy keeps every row a valid input).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, **kwargs):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"feature arrays of different lengths {sorted(sizes)}")
        super().__init__(sizes.pop(), global_batch_size, **kwargs)
        self.arrays = dict(arrays)

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.zeros(self.local_batch_size, np.float32)
        weights[: len(indices)] = 1.0
        filler = indices[-1] if len(indices) else self._epoch_order(self.epoch)[-1]
        indices = np.concatenate([indices, np.full(self.local_batch_size - len(indices), filler, indices.dtype)])
        return {**{k: v[indices] for k, v in self.arrays.items()}, "weights": weights}


# -- Losses and predictions ------------------------------------------------------------------


def _apply(model: nn.Module, params, batch, dropout_rng):
    return model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=dropout_rng is None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
    )


def task_sums(task: str, out, batch, regression: bool = False):
    """`(loss_sum, (count, correct))` of a task's model outputs `out` against the batch's targets, as
    `transformers` defines each head's loss (its mean is `loss_sum / count`): cross-entropy over examples
    (classification, multiple choice), over labelled tokens (ner: labels -100 are left out), the mean of the
    start and end cross-entropies (qa), or the squared error (regression; "correct": within 0.5 of the
    target). Every term is weighted by `batch["weights"]`."""
    w = batch["weights"]
    if task == "qa":
        start, end = out
        s_sum, count, _ = steps.xent_sums(start, batch["start_positions"], w)
        e_sum, _, _ = steps.xent_sums(end, batch["end_positions"], w)
        both = (jnp.argmax(start, -1) == batch["start_positions"]) & (jnp.argmax(end, -1) == batch["end_positions"])
        return (s_sum + e_sum) / 2, (count, jnp.sum(both * w))
    if task == "ner":
        labels = batch["labels"]
        valid = labels != ner.IGNORE_INDEX
        loss_sum, count, correct = steps.xent_sums(out, jnp.where(valid, labels, 0), valid * w[:, None])
        return loss_sum, (count, correct)
    if regression:
        error = out[:, 0] - batch["labels"]
        return jnp.sum(w * error**2), (jnp.sum(w), jnp.sum(w * (jnp.abs(error) < 0.5)))
    loss_sum, count, correct = steps.xent_sums(out, batch["labels"], w)
    return loss_sum, (count, correct)


def task_loss(task: str, model: nn.Module, regression: bool = False):
    """`loss_fn(params, batch, dropout_rng) -> (loss_sum, (count, correct))` of a task (`task_sums`), the
    objective `steps.make_train_step` takes. `dropout_rng=None` is deterministic."""

    def loss_fn(params, batch, dropout_rng):
        return task_sums(task, _apply(model, params, batch, dropout_rng), batch, regression)

    return loss_fn


def accuracy_name(task: str, regression: bool = False) -> str:
    """The name `train/<name>` of a task's `correct / count` in the step metrics."""
    if regression:
        return "within_0.5"
    return {"qa": "span_accuracy", "ner": "token_accuracy"}.get(task, "accuracy")


def _metric_outputs(task: str, out):
    """What a task's `compute_metrics` reads of the model outputs: the logits, (start, end) logits for qa,
    and for ner the predicted label ids int32 [B, L] (a tenth of the logits to bring back to the host)."""
    return jnp.argmax(out, -1).astype(jnp.int32) if task == "ner" else out


def task_eval_step(task: str, model: nn.Module, regression: bool = False):
    """`eval_step(params, batch) -> ({"loss_sum", "count", "correct"}, outputs)`: the eval loss sums
    (`task_sums`) and the outputs the metrics read (`_metric_outputs`), from one deterministic forward pass."""

    def eval_step(params, batch):
        out = _apply(model, params, batch, None)
        loss_sum, (count, correct) = task_sums(task, out, batch, regression)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}, _metric_outputs(task, out)

    return eval_step


def compute_metrics(config, data: TaskData, outputs) -> dict[str, float]:
    """The task's metrics of the eval outputs (all eval features, in order)."""
    task = tasks.get_task(config.task)
    if config.task == "ner":
        return task.compute_metrics(outputs, data.eval_features, data.eval_examples, data.label_list)
    if config.task == "qa":
        return task.compute_metrics(outputs, data.eval_features, data.eval_examples, n_best=config.n_best,
                                    max_answer_length=config.max_answer_length)
    return task.compute_metrics(outputs, data.eval_features, data.eval_examples)


def gather_rows(outputs: Sequence[Any], num_rows: int):
    """Per-batch outputs (arrays, or tuples of arrays for qa) -> the first `num_rows` rows, concatenated."""
    if isinstance(outputs[0], (tuple, list)):
        return tuple(np.concatenate(parts)[:num_rows] for parts in zip(*outputs))
    return np.concatenate(outputs)[:num_rows]
