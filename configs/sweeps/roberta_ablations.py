"""The RoBERTa paper's ablations (Liu et al. 2019, tables 1 and 3) and the masking options its follow-ups
ask for, at the size of configs/tiny.py: one named run each, every run seeing the same tokens
(9,600 rows of 128 = ~10 passes over the demo corpus).

    python -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/ablations \\
        --runs configs/sweeps/roberta_ablations.py --set progress=False --set export_hf=False
    python -m roberta_jax.tools.sweep compare --workdir runs/ablations --metric eval/loss \\
        --plot runs/ablations/eval_loss.png

- Table 1, static against dynamic masking: the paper masked each sequence 10 ways over 40 epochs, so
  each mask was seen 4 times; here ~10 passes with 3 copies, each mask seen ~3 times.
- Table 2 needs the DOC-SENTENCES and pair formats, not built yet; `no_cross_document_attention`
  keeps FULL-SENTENCES rows but stops attention (and positions) at document boundaries.
- Table 3, batch size at equal passes over the data: the paper's 256 / 2K / 8K sequences with lr
  1e-4 / 7e-4 / 1e-3; here the tiny recipe's 32 (lr 1e-3, tuned) stands for 2K, and 8 and 128 keep the
  paper's lr ratios (x1/7 and x10/7) with 4x the steps and 1/4 of them.
"""


def get_runs():
    return {
        "dynamic": {},  # configs/tiny.py as it is: FULL-SENTENCES, dynamic masking, batch 32
        "static_x3": {"masking.static_copies": 3},
        "whole_word": {"masking.whole_word": True},
        "span": {"masking.span": True},
        "no_cross_document_attention": {"data.cross_document_attention": False},
        "batch8": {"batch_size": 8, "total_steps": 1200, "optimizer.peak_lr": 1.4e-4,
                   "optimizer.warmup_steps": 120, "eval_every_steps": 400, "checkpoint.every_steps": 400},
        "batch128": {"batch_size": 128, "total_steps": 75, "optimizer.peak_lr": 1.4e-3,
                     "optimizer.warmup_steps": 8, "eval_every_steps": 25, "checkpoint.every_steps": 25},
    }
