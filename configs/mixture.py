"""A tiny RoBERTa on a weighted mixture of three corpora, as RoBERTa mixed its five: Tiny Shakespeare, a
TinyStories sample and the WikiText-2 test set from ../shared/data/corpus, weighted 0.5 / 0.3 / 0.2.

    python train.py --config configs/mixture.py --workdir runs/mixture

Each batch slot draws its source by weight and each source walks its own shuffled epochs (`data.mixture`): the
stories' 7 rows of 128 tokens come round more than once per step (about 10 of the 32 slots), as an over-weighted
small corpus would, while Shakespeare takes about 140 steps per epoch and the wiki about 370. 20% of each source's
documents are held out (one of the five stories); the log has eval/loss over all of them and eval/<name>/loss,
perplexity and accuracy per source. Measured (one run of the 300 steps on a loaded 2-core CPU, stopped at step
266 and resumed): train/loss 5.25; eval/loss 6.56, eval/shakespeare/loss 6.25, eval/stories/loss 6.26,
eval/wiki/loss 6.87 (accuracy 10.2%, 8.7%, 5.7%).
Prepared once instead (eval_fraction must be 0 there; give the sources eval_files to evaluate):

    python -m roberta_jax.tools.prepare --config configs/mixture.py --out /tmp/mixture --config.data.eval_fraction=0
    python train.py --config configs/mixture.py --workdir runs/mixture-prepared --config.data.eval_fraction=0 \\
        --config.data.prepared=/tmp/mixture

`configs/mixture.py:DIR` reads the sources from DIR instead: DIR/<name>.txt for each of SOURCES, with
DIR/<name>.eval.txt as its held-out text where that file exists (then eval_fraction is 0).
"""

import os

from configs import tiny
from configs.common import shared_data
from roberta_jax.train.config import add_source

# name: (the file under ../shared/data/corpus, its fields: weight and how it splits into documents)
SOURCES = {
    "shakespeare": ("tinyshakespeare.txt", dict(weight=0.5, doc_split="blank_line")),
    "stories": ("tinystories-sample.txt", dict(weight=0.3, doc_separator="<|endoftext|>")),  # five stories
    "wiki": ("wikitext2-test.raw", dict(weight=0.2, doc_split="line")),  # a paragraph per line
}


def get_config(arg=None):
    c = tiny.get_config()
    c.data.train_files = ""
    c.data.eval_fraction = 0.2  # of each source's documents: one of the five stories
    for name, (file, fields) in SOURCES.items():
        if not arg:
            add_source(c, name, train_files=shared_data("corpus", file), **fields)
            continue
        held_out = os.path.join(arg, f"{name}.eval.txt")
        add_source(c, name, train_files=os.path.join(arg, f"{name}.txt"), **fields,
                   eval_files=held_out if os.path.exists(held_out) else "")
        if os.path.exists(held_out):
            c.data.eval_fraction = 0.0
    return c
