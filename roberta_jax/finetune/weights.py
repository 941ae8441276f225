"""The initial weights of a fine-tuning run: an HF-format directory or a pretraining workdir, local or `gs://`.

    arch = initial_config("runs/base")                        # its architecture (RobertaConfig)
    params, report = load_initial("runs/base", state.params)  # its weights in the head model's tree
    tokenizer_dir("runs/base")                                # where its tokenizer is
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from roberta_jax import storage
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.train import checkpoint
from roberta_jax.train import workdir as workdir_files


def initial_config(init_from: str) -> RobertaConfig:
    """The architecture of `init_from`: an HF directory's `config.json`, or a pretraining workdir's
    `model_config.json`."""
    if not storage.isdir(init_from):
        storage.check_access(init_from)
        raise FileNotFoundError(f"init_from={init_from!r} is not a directory (an HF directory or a pretraining run)")
    if workdir_files.is_pretraining_workdir(init_from):
        return RobertaConfig.from_json_file(storage.join(init_from, workdir_files.MODEL_CONFIG))
    return RobertaConfig.from_json_file(init_from)


def max_length_limit(config: RobertaConfig) -> int:
    """The longest row the model's position table holds: RoBERTa's positions start at pad_token_id + 1."""
    return config.max_position_embeddings - config.pad_token_id - 1


def pretrained_state_dict(init_from: str) -> dict[str, np.ndarray]:
    """{HF name: array} of `init_from`: an HF directory's `model.safetensors`, or the encoder (`roberta.*`;
    the LM head is dropped) of a pretraining workdir's newest checkpoint."""
    if not workdir_files.is_pretraining_workdir(init_from):
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
    """Where the tokenizer of `init_from` is: the HF directory itself, or a pretraining workdir's
    (`workdir.tokenizer_dir`); `--config.tokenizer_path` overrides both."""
    if not workdir_files.is_pretraining_workdir(init_from):
        return init_from
    return workdir_files.tokenizer_dir(init_from)
