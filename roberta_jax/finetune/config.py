"""The default fine-tuning config (GLUE-style, RoBERTa's recipe); `configs/finetune/*.py` adjust it.

Every field can be overridden on the command line (`--config.optimizer.peak_lr=2e-5`); an unknown
key is an error that names the nearest valid one. Relative data paths are read from the directory
`finetune.py` runs in. The runtime fields (dtype, mesh, checkpoints, ...) are pretraining's
(`train.config.add_runtime_fields`).
"""

from __future__ import annotations

import ml_collections

from roberta_jax.train.config import add_runtime_fields


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"  # a task of `roberta_jax.finetune.tasks`: classification | ner | qa | multiple_choice
    # Initial weights: an HF-format directory (config.json + model.safetensors, e.g. roberta-base or a
    # pretraining run's WORKDIR/hf) or a pretraining workdir (its newest Orbax checkpoint).
    c.init_from = ""
    # True: the weights of `init_from` are not loaded, only its architecture and tokenizer (a random-init baseline).
    c.init_random = False
    c.tokenizer_path = ""  # "" = the tokenizer beside the weights (init_from, or WORKDIR/tokenizer of a workdir)
    c.seed = 42  # head init, shuffling and dropout

    c.data = ml_collections.ConfigDict(
        dict(
            train_file="",  # the task's file format (`roberta_jax.finetune.tasks`); relative to the working dir
            eval_file="",  # evaluated every eval_every_steps and at the end; must hold labels too
            # More labelled eval files, "name=path,name=path": each scored like eval_file, as eval/<name>/<metric>
            # (MNLI's dev_mismatched beside dev_matched). The best export follows eval_file alone.
            extra_eval_files="",
            max_train_examples=0,  # 0 = all; else a random subset of this size (chosen by `seed`)
            max_eval_examples=0,  # 0 = all; else the first this many
            max_length=128,  # tokens per row; longer inputs are truncated (QA: cut into windows)
            doc_stride=128,  # qa: tokens shared by consecutive windows of a long context
            labels="",  # classification, ner: comma-separated label list; "" = the training file's, sorted
            regression=False,  # classification: a numeric target, one output, MSE loss (STS-B)
            text_a="",  # classification: text columns ("" = the first of GLUE's names found)
            text_b="",
            label_column="label",
            columns="",  # classification: comma-separated column names of a file without a header line (CoLA)
            version_2_with_negative=False,  # qa: SQuAD v2.0, unanswerable questions predicted as ""
        )
    )
    # Dropout of the fine-tuned model, replacing the checkpoint's (RoBERTa fine-tunes with 0.1).
    c.model = ml_collections.ConfigDict(dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))

    c.batch_size = 32  # global examples per step (all hosts, all microbatches)
    c.grad_accum_steps = 1  # microbatches per step, accumulated inside the compiled step
    c.num_epochs = 10.0  # sets the schedule's length: steps = ceil(num_epochs * train examples / batch_size)
    c.total_steps = 0  # > 0 overrides num_epochs
    # AdamW with linear warmup (a ratio of the steps) to peak_lr, then linear decay to end_lr; weight decay on
    # kernels and embeddings only; grad_clip_norm 0 = no clipping.
    c.optimizer = ml_collections.ConfigDict(
        dict(
            peak_lr=1e-5, warmup_ratio=0.06, end_lr=0.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
            grad_clip_norm=0.0,
        )
    )

    c.eval_batch_size = 0  # 0 = batch_size
    c.eval_every_steps = 1000  # and at the end
    c.best_metric = "accuracy"  # a key of the task's compute_metrics; the best export keeps its highest value
    c.n_best = 20  # qa: start/end candidates per window
    c.max_answer_length = 30  # qa: longest answer, in tokens
    # qa v2: predict "" where the null score (start+end logit of <s>) beats the best span's by more than this.
    c.null_score_diff_threshold = 0.0

    c.log_every_steps = 50  # TensorBoard interval; metrics.jsonl gets every step
    return add_runtime_fields(c, checkpoint_keep=1)
