"""Paths the config files share: the repository, its demo corpus, and the public data beside it.

The config files import this as `configs.common`: the entry scripts (`train.py`, `finetune.py`) sit in
the repository root, which Python puts first on the import path.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CORPUS = os.path.join(REPO, "data", "demo_corpus.txt")
# The fine-tuning configs' default data: `../shared/data` beside the repository (SST-2, CoNLL-2003, SQuAD, SWAG).
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def shared_data(*parts: str) -> str:
    """A path under `SHARED_DATA`: `shared_data("sst2", "train.tsv")`."""
    return os.path.join(SHARED_DATA, *parts)
