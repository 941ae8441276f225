"""HF `transformers` checkpoints both ways: `model.safetensors` + `config.json` (+ tokenizer files).

Flax parameter paths map to PyTorch state-dict names by one rule, because the modules are named
as HF names them: path components joined with '.', `layer_3` -> `layer.3`, and the leaf
`kernel` -> `weight` (transposed: Flax is [in, out], torch.nn.Linear [out, in]),
`embedding`/`scale` -> `weight`, `bias` -> `bias`. The tied MLM decoder (`lm_head.decoder.*`)
is not written: `transformers` ties it to the word embeddings and `lm_head.bias` on load. Weights the HF
class has not (the pretraining-only next-sentence head) are not written either; `save_hf` names them.
XLM-R and CamemBERT checkpoints (`model_type` "xlm-roberta", "camembert") use the same names; an export's
`architectures` is named for its config's model type (`XLMRobertaForMaskedLM`).

    params, config = load_hf("roberta-base-dir", RobertaForSequenceClassification, num_labels=2)
    save_hf("out-dir", RobertaForMaskedLM(config), params, tokenizer=tok)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from roberta_jax import storage
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES, architecture_name, init_params

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Non-parameter buffers some checkpoints carry, and tied copies transformers rebuilds itself.
_IGNORED = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$|^lm_head\.decoder\.bias$")
_TIED_DECODER = "lm_head.decoder.weight"


@dataclasses.dataclass
class LoadReport:
    """What an import found: names as in the checkpoint (HF names)."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)  # "name: checkpoint (a,) vs model (b,)"

    def __str__(self) -> str:
        parts = [f"{k} ({len(v)}): {', '.join(v)}" for k, v in dataclasses.asdict(self).items() if v]
        return "; ".join(parts) or "all weights matched"


def flax_path_to_hf(path: tuple[str, ...]) -> str:
    """('roberta', 'encoder', 'layer_0', 'attention', 'self', 'query', 'kernel') ->
    'roberta.encoder.layer.0.attention.self.query.weight'."""
    *modules, leaf = path
    modules = [re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in modules]
    leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*modules, leaf])


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params -> {HF name: numpy array in PyTorch layout}."""
    state = {}
    for path, value in traverse_util.flatten_dict(nn.meta.unbox(params)).items():
        value = np.asarray(jax.device_get(value))
        if path[-1] == "kernel":
            value = value.T
        state[flax_path_to_hf(path)] = np.ascontiguousarray(value)
    return state


def _normalise_hf_names(state: Mapping[str, np.ndarray], expected: set[str]) -> dict[str, np.ndarray]:
    """Renames checkpoint keys to the model's: old `gamma`/`beta` LayerNorm names, and the
    `roberta.` prefix added or removed as HF does between base-model and head checkpoints."""
    out = {}
    for name, value in state.items():
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name not in expected:
            if name.startswith("roberta.") and name[len("roberta."):] in expected:
                name = name[len("roberta."):]
            elif f"roberta.{name}" in expected:
                name = f"roberta.{name}"
        out[name] = value
    if "lm_head.bias" in expected and "lm_head.bias" not in out and "lm_head.decoder.bias" in out:
        out["lm_head.bias"] = out["lm_head.decoder.bias"]
    return out


def state_dict_to_params(state: Mapping[str, np.ndarray], template: Mapping[str, Any]):
    """{HF name: array} -> (params shaped like `template`, LoadReport).

    `template` is a params tree of arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
    Leaves missing from the checkpoint, or of the wrong shape, are left out of the result.
    """
    flat_template = traverse_util.flatten_dict(nn.meta.unbox(template))
    names = {flax_path_to_hf(p): p for p in flat_template}
    state = _normalise_hf_names(state, set(names))
    report, flat = LoadReport(), {}
    for name, path in names.items():
        if name not in state:
            report.missing.append(name)
            continue
        value, want = np.asarray(state[name]), flat_template[path]
        # Shapes are compared and reported in the checkpoint's (PyTorch) layout.
        want_shape = tuple(want.shape)[::-1] if path[-1] == "kernel" else tuple(want.shape)
        if value.shape != want_shape:
            report.mismatched.append(f"{name}: checkpoint {value.shape} vs model {want_shape}")
            continue
        flat[path] = jnp.asarray(value.T if path[-1] == "kernel" else value, dtype=want.dtype)
    report.unexpected = sorted(
        n for n in state if n not in names and not _IGNORED.search(n) and n != _TIED_DECODER
    )
    return traverse_util.unflatten_dict(flat), report


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or of the shards an index names) in a directory or file, local or
    `gs://` (a remote file is copied to a local temporary file to be read). A half-written directory
    (`storage.check_whole`) is an error naming it, and so is a truncated or corrupt file (a ValueError)."""
    state = {}
    for file in _safetensors_files(os.fspath(path)):
        with storage.local_copy(file) as local:
            try:
                state.update(safetensors.numpy.load_file(local))
            except safetensors.SafetensorError as err:
                raise ValueError(f"{file} is truncated or corrupt, not a whole safetensors file ({err}); download "
                                 "or save the model again") from err
    return state


def _safetensors_files(path: str) -> list[str]:
    """`path` itself if a file, else its `model.safetensors` or the shards its index names."""
    if storage.isfile(path):
        return [path]
    storage.check_whole(path)
    if storage.isfile(storage.join(path, SAFETENSORS)):
        return [storage.join(path, SAFETENSORS)]
    index = storage.join(path, SAFETENSORS_INDEX)
    if storage.isfile(index):
        return [storage.join(path, shard) for shard in sorted(set(json.loads(storage.read_text(index))["weight_map"]
                                                                  .values()))]
    storage.check_access(path)
    raise FileNotFoundError(
        f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {path!r}; save the PyTorch model with "
        "`save_pretrained(dir)` (safetensors is its default)."
    )


def load_hf(
    path: str,
    architecture: str | type[nn.Module],
    *,
    rng: jax.Array | None = None,
    strict: bool = False,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    **config_overrides,
) -> tuple[dict, nn.Module, LoadReport]:
    """Imports an HF-format directory (local or `gs://`) into `architecture` (a class or its HF name).

    Weights the checkpoint lacks (a new task head on a pretrained encoder) are initialised from
    `rng`, as `from_pretrained` does; with `strict=True` any missing, unexpected or mis-shaped
    weight is an error listing them. Mis-shaped weights are always an error.

    Returns (params, model, report); `model.config` is the directory's config.json with
    `config_overrides` (e.g. `num_labels=3`) applied.
    """
    cls = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    config = RobertaConfig.from_json_file(path).replace(**config_overrides)
    model = cls(config, dtype=dtype, param_dtype=param_dtype)
    rng = jax.random.key(0) if rng is None else rng
    template = jax.eval_shape(lambda: init_params(model, rng))
    params, report = state_dict_to_params(read_safetensors(path), template)
    if report.mismatched or (strict and (report.missing or report.unexpected)):
        raise ValueError(f"checkpoint {path!r} does not fit {cls.__name__}: {report}")
    if report.missing:
        fresh = traverse_util.flatten_dict(init_params(model, rng))
        flat = traverse_util.flatten_dict(params)
        params = traverse_util.unflatten_dict({p: flat.get(p, v) for p, v in fresh.items()})
    return params, model, report


def save_hf(out_dir: str, model: nn.Module, params: Mapping[str, Any], tokenizer=None) -> list[str]:
    """Writes `model.safetensors` + `config.json` (+ the tokenizer's files) into `out_dir`, loadable
    by the matching `transformers` class's `from_pretrained(out_dir)` with nothing missing or unexpected.

    Only the weights that class has are written: the names of the others (the next-sentence head of
    `RobertaForMaskedLM(next_sentence=True)`) are returned, sorted, for the caller's report."""
    os.makedirs(out_dir, exist_ok=True)
    hf_names = hf_weight_names(model)
    state, left_out = {}, []
    for name, value in params_to_state_dict(params).items():
        if name in hf_names:
            state[name] = value.astype(np.float32)
        else:
            left_out.append(name)
    safetensors.numpy.save_file(state, os.path.join(out_dir, SAFETENSORS), metadata={"format": "pt"})
    model.config.replace(architectures=(architecture_name(model),)).to_json_file(
        os.path.join(out_dir, "config.json")
    )
    if tokenizer is not None:
        tokenizer.save(out_dir)
    return sorted(left_out)


def hf_weight_names(model: nn.Module) -> set[str]:
    """The HF names of the weights of `model`'s HF class (`heads.architecture_name`): its params as the plain
    architecture, without training-only heads."""
    plain = ARCHITECTURES[architecture_name(model)](model.config)
    template = jax.eval_shape(lambda: init_params(plain, jax.random.key(0)))
    return {flax_path_to_hf(path) for path in traverse_util.flatten_dict(template)}
