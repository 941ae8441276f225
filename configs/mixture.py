"""A tiny RoBERTa on a weighted mixture of three corpora, as RoBERTa mixed its five: Tiny Shakespeare, a
TinyStories sample and the WikiText-2 test set from ../shared/data/corpus, weighted 0.5 / 0.3 / 0.2.

    python train.py --config configs/mixture.py --workdir runs/mixture

Each batch slot draws its source by weight and each source walks its own shuffled epochs (`data.mixture`), so
the 4 KB of stories come round every few steps while Shakespeare is read once. 5% of each source's documents
are held out; the log has eval/loss over all of them and eval/<name>/loss, perplexity and accuracy per source.
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

# name: (weight, the file under ../shared/data/corpus, its documents' split)
SOURCES = {
    "shakespeare": (0.5, "tinyshakespeare.txt", "blank_line"),
    "stories": (0.3, "tinystories-sample.txt", "blank_line"),
    "wiki": (0.2, "wikitext2-test.raw", "line"),
}


def get_config(arg=None):
    c = tiny.get_config()
    c.data.train_files = ""
    c.data.eval_fraction = 0.05
    for name, (weight, file, doc_split) in SOURCES.items():
        if not arg:
            add_source(c, name, train_files=shared_data("corpus", file), weight=weight, doc_split=doc_split)
            continue
        held_out = os.path.join(arg, f"{name}.eval.txt")
        add_source(c, name, train_files=os.path.join(arg, f"{name}.txt"), weight=weight, doc_split=doc_split,
                   eval_files=held_out if os.path.exists(held_out) else "")
        if os.path.exists(held_out):
            c.data.eval_fraction = 0.0
    return c
