"""The RoBERTa paper's ablations (Liu et al. 2019, tables 1 to 3) and the masking options its follow-ups
ask for, at the size of configs/tiny.py: one named run each, every run seeing the same number of rows
(3,200 rows of 128 tokens, ~3.3 passes over the demo corpus: a third of the tiny run, to keep a CPU
sweep to minutes per run).

    python -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/ablations \\
        --runs configs/sweeps/roberta_ablations.py --set progress=False --set export_hf=False
    python -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/ablations \\
        --runs configs/sweeps/roberta_ablations.py:options --set progress=False --set export_hf=False
    python -m roberta_jax.tools.sweep compare --workdir runs/ablations --metric eval/loss \\
        --plot runs/ablations/eval_loss.png

- Table 1, static against dynamic masking: the paper masked each sequence 10 ways over 40 epochs, so
  each mask was seen 4 times; here ~3.3 passes with one copy, each mask seen ~3 times.
- Table 2: SEGMENT-PAIR+NSP (`segment_pair`), SENTENCE-PAIR+NSP (`sentence_pair`), FULL-SENTENCES
  (`dynamic`) and DOC-SENTENCES (`doc_sentences`). The pair runs add the next-sentence loss to MLM; their
  eval/loss is MLM's alone (on their own held-out pair rows). A pair row holds far fewer real tokens than a
  packed one (on the demo corpus about 48 of 128 for segment pairs, 22 for sentence pairs), so at equal rows
  they see fewer tokens: the paper raised the batch of its sentence-pair runs to even that out, this sweep
  keeps the batch.
  `no_cross_document_attention` (options) keeps FULL-SENTENCES rows but stops attention (and positions) at
  document boundaries.
- Table 3, batch size at equal passes over the data: the paper's 256 / 2K / 8K sequences with lr
  1e-4 / 7e-4 / 1e-3; here the tiny recipe's 32 (lr 1e-3, tuned) stands for 2K, and 8 and 128 keep the
  paper's lr ratios (x1/7 and x10/7) with 4x the steps and 1/4 of them.
"""

ROWS = 3200  # rows seen by every run


def schedule(batch_size: int, peak_lr: float) -> dict:
    """The overrides of a run of `batch_size` rows a step that sees ROWS rows: steps, 10% warmup, one
    evaluation at the end (and a checkpoint there)."""
    steps = ROWS // batch_size
    return {"batch_size": batch_size, "total_steps": steps, "optimizer.peak_lr": peak_lr,
            "optimizer.warmup_steps": steps // 10, "eval_every_steps": steps, "checkpoint.every_steps": steps}


def get_runs(arg: str = ""):
    """The paper's tables 1-3; with `arg` "options" (`--runs configs/sweeps/roberta_ablations.py:options`),
    the options beyond the paper against the same baseline."""
    base = schedule(32, 1e-3)  # configs/tiny.py's batch and lr: FULL-SENTENCES, dynamic masking
    if arg == "options":
        return {
            "no_cross_document_attention": {**base, "data.cross_document_attention": False},
            "whole_word": {**base, "masking.whole_word": True},
            "span": {**base, "masking.span": True},
            "polynomial_power2": {**base, "optimizer.schedule": "polynomial", "optimizer.power": 2.0},
        }
    if arg:
        raise ValueError(f"roberta_ablations.py: unknown variant {arg!r}; use '' (the paper's tables) or 'options'")
    return {
        "dynamic": base,  # table 1 and 2's FULL-SENTENCES and 3's middle row
        "static_x1": {**base, "masking.static_copies": 1},
        "doc_sentences": {**base, "data.input_format": "doc_sentences"},
        "segment_pair": {**base, "data.input_format": "segment_pair"},  # SEGMENT-PAIR+NSP
        "sentence_pair": {**base, "data.input_format": "sentence_pair"},  # SENTENCE-PAIR+NSP
        "batch8": schedule(8, 1.4e-4),
        "batch128": schedule(128, 1.4e-3),
    }
