"""The RoBERTa architecture config: HF `RobertaConfig` field names and defaults, `config.json` in and out.

Only the architecture lives here. Training knobs (compute dtype, rematerialisation, attention
implementation) are attributes of the Flax modules, so a `config.json` written by `transformers`
loads here unchanged and the one written here loads in `transformers` unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from roberta_jax import storage
from roberta_jax.suggest import did_you_mean

# Activations by their HF names; `layers.ACTIVATIONS` implements each.
_SUPPORTED_ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh", "tanh")
# HF model types of the RoBERTa architecture -> the prefix of their class names (`XLMRobertaForMaskedLM`).
# CamemBERT and XLM-R are RoBERTa with a SentencePiece vocabulary; their weights keep the `roberta.` prefix.
MODEL_TYPES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"}


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    """RoBERTa hyper-parameters, named and defaulted as in HF `transformers.RobertaConfig`."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    # None: not given (transformers 5 no longer writes it); learned absolute positions either way.
    position_embedding_type: str | None = None
    classifier_dropout: float | None = None
    is_decoder: bool = False
    tie_word_embeddings: bool = True
    # Task heads. `id2label` decides `num_labels`, as in HF.
    id2label: Mapping[int, str] | None = dataclasses.field(default=None, compare=False, hash=False)
    label2id: Mapping[str, int] | None = dataclasses.field(default=None, compare=False, hash=False)
    problem_type: str | None = None
    architectures: tuple[str, ...] | None = None
    model_type: str = "roberta"
    # Everything else found in a config.json (e.g. `transformers_version`, `dtype`), kept verbatim.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.position_embedding_type not in (None, "absolute"):
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not implemented; "
                "only 'absolute' (RoBERTa's learned positions) is supported."
            )
        if self.hidden_act not in _SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {_SUPPORTED_ACTIVATIONS}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type={self.model_type!r}{did_you_mean(self.model_type, MODEL_TYPES)}; this package "
                f"implements the RoBERTa architecture as {list(MODEL_TYPES)}."
            )
        if self.id2label is None:
            object.__setattr__(self, "id2label", {0: "LABEL_0", 1: "LABEL_1"})
        object.__setattr__(self, "id2label", {int(k): v for k, v in self.id2label.items()})
        if self.label2id is None:
            object.__setattr__(self, "label2id", {v: k for k, v in self.id2label.items()})
        if self.architectures is not None:
            object.__setattr__(self, "architectures", tuple(self.architectures))

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> RobertaConfig:
        """A copy with `changes`; `num_labels=N` resets the label maps as HF does."""
        num_labels = changes.pop("num_labels", None)
        if num_labels is not None and "id2label" not in changes:
            changes["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
            changes.setdefault("label2id", None)
        if "id2label" in changes and "label2id" not in changes:
            changes["label2id"] = None
        return dataclasses.replace(self, **changes)

    # -- HF config.json --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobertaConfig:
        """From a `config.json` dict; unknown keys go to `extra`, `num_labels` makes label maps."""
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: d.pop(k) for k in list(d) if k in fields}
        num_labels = d.pop("num_labels", None)
        if num_labels is not None and "id2label" not in known:
            known["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        return cls(**known, extra=d)

    def to_dict(self) -> dict[str, Any]:
        """The `config.json` dict `transformers.RobertaConfig` reads (label keys as strings)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["label2id"] = dict(self.label2id)
        d["architectures"] = list(self.architectures) if self.architectures is not None else None
        if self.position_embedding_type is None:
            del d["position_embedding_type"]
        d.update(self.extra)
        return d

    @classmethod
    def from_json_file(cls, path: str) -> RobertaConfig:
        """From `config.json`, or the directory holding it (an HF directory: a half-written one, see
        `storage.check_whole`, is an error naming it); local or `gs://`."""
        path = os.fspath(path)
        if storage.isdir(path):
            storage.check_whole(path)
            path = storage.join(path, "config.json")
        with storage.naming_missing(path):
            text = storage.read_text(path)
        return cls.from_dict(json.loads(text))

    def to_json_file(self, path: str) -> str:
        """Writes `config.json` (into `path` if it is a directory); returns the file path."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path


PRESETS: dict[str, dict[str, Any]] = {
    # 146k parameters: the unit tests' model.
    "micro": dict(
        vocab_size=1024,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=130,
    ),
    # The README's quickstart (`configs/tiny.py`): 1.36M parameters with its 4096-token vocabulary.
    "tiny": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, max_position_embeddings=130
    ),
    # roberta-base, 125M parameters.
    "base": dict(),
    # roberta-large, 355M parameters.
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
}


def preset(name: str, **overrides) -> RobertaConfig:
    """`preset("base", hidden_dropout_prob=0.0)`: a named architecture with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; choose from {list(PRESETS)}.")
    fields = {f.name for f in dataclasses.fields(RobertaConfig)} | {"num_labels"}
    for key in overrides:
        if key not in fields:
            raise ValueError(f"unknown RobertaConfig field {key!r}{did_you_mean(key, fields)}.")
    config = RobertaConfig(**PRESETS[name])
    return config.replace(**overrides)
