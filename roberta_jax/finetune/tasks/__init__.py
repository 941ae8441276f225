"""Fine-tuning tasks: one module per task, found by its config name through `TASKS`.

A task module declares everything `finetune.run` needs of it, the `Task` protocol below: its head, how
its files become examples and features, its loss sums and its metrics. Nothing outside this registry
looks at a task's name, so adding a task is one module here plus one config in `configs/finetune/`.

| name | module | head | outputs the metrics read |
| --- | --- | --- | --- |
| classification | `classification` | RobertaForSequenceClassification | logits [N, num_labels] |
| ner | `ner` | RobertaForTokenClassification | predicted label ids [N, L] |
| qa | `qa` | RobertaForQuestionAnswering | (start, end) logits [F, L] each |
| multiple_choice | `multiple_choice` | RobertaForMultipleChoice | logits [N, choices] |

Each module also keeps its task-specific building blocks (`load_examples`, `featurize`,
`compute_metrics`, ...), pure functions over files and numpy arrays that the protocol functions call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from roberta_jax.finetune.tasks import classification, multiple_choice, ner, qa
from roberta_jax.suggest import did_you_mean


@runtime_checkable
class Task(Protocol):
    """What a task module declares. `config` is the whole fine-tuning config (`finetune/config.py`)."""

    ARCHITECTURE: str  # the head, as an HF `architectures` name
    TARGETS: tuple[str, ...]  # the feature arrays the loss reads besides input_ids and attention_mask

    def read_split(self, config, path: str) -> list:
        """The examples of one file, with the task's options from `config.data`."""

    def choose_labels(self, config, examples: Sequence[Any]) -> list[str] | None:
        """The label names (`config.data.labels`, else from `examples`), or None for a task without them."""

    def example_labels(self, config, example: Any) -> tuple[tuple[str, int | None], ...]:
        """The label names one example carries, each with the line of its file it is on (None where the
        format has no lines); none for a task without label names."""

    def make_features(self, config, examples: Sequence[Any], tokenizer, labels: list[str] | None) -> dict:
        """Fixed-shape int32/float32 arrays, one row per model input: `input_ids`, `attention_mask`, the
        `TARGETS` and what the metrics need."""

    def head_fields(self, config, labels: list[str] | None) -> dict[str, Any]:
        """The architecture fields the task decides (label maps, `num_labels`, `problem_type`)."""

    def loss_sums(self, config, outputs, batch: dict) -> tuple[Any, tuple[Any, Any]]:
        """`(loss_sum, (count, correct))` of the head's `outputs` against the batch's targets, every term
        weighted by `batch["weights"]` [B] (0 for the rows that only fill an evaluation batch)."""

    def metric_outputs(self, config, outputs) -> Any:
        """What the metrics read of the head's outputs, computed on device (e.g. argmax ids)."""

    def score(self, config, outputs, features: dict[str, np.ndarray], examples: Sequence[Any],
              labels: list[str] | None) -> dict[str, float]:
        """The task's metrics of `metric_outputs` over all eval features, in order."""

    def metric_names(self, config) -> tuple[str, ...]:
        """The keys `score` returns (the eval loss is added by the runner)."""

    def accuracy_name(self, config) -> str:
        """The name `train/<name>` of `correct / count` in the step metrics."""


TASKS: dict[str, Task] = {
    "classification": classification,
    "ner": ner,
    "qa": qa,
    "multiple_choice": multiple_choice,
}


def get_task(name: str) -> Task:
    """The task module registered as `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)} The tasks are {sorted(TASKS)}")
    return TASKS[name]
