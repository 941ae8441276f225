"""Fine-tuning tasks: the data side and the metrics, pure functions over files and numpy arrays.

Every task module has the same three steps (task-specific options as keywords):

    examples = task.load_examples(path, **options)                        # list[task.Example]
    features = task.featurize(examples, tokenizer, max_length, **options)   # dict of fixed-shape int32 arrays
    scores = task.compute_metrics(outputs, features, examples, **options)   # dict[str, float]

`features` hold the model inputs (`input_ids`, `attention_mask`), the training targets (`labels`, or
`start_positions`/`end_positions`) and what post-processing needs; `outputs` are the head's logits over
all features, in order. `TASKS` maps the config names to the modules:

| name | module | head | outputs |
| --- | --- | --- | --- |
| classification | `classification` | RobertaForSequenceClassification | logits [N, num_labels] |
| ner | `tokens` | RobertaForTokenClassification | logits [N, L, num_labels] |
| qa | `qa` | RobertaForQuestionAnswering | (start, end) logits [F, L] each |
| multiple_choice | `multiple_choice` | RobertaForMultipleChoice | logits [N, choices] |
"""

from __future__ import annotations

import difflib
from types import ModuleType

from roberta_jax.finetune.tasks import classification, multiple_choice, ner, qa

TASKS: dict[str, ModuleType] = {
    "classification": classification,
    "ner": ner,
    "qa": qa,
    "multiple_choice": multiple_choice,
}


def get_task(name: str) -> ModuleType:
    """The task module registered as `name`."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} The tasks are {sorted(TASKS)}")
    return TASKS[name]
