"""Logits of every head against HF `transformers` PyTorch RoBERTa, XLM-R and CamemBERT, both directions, float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.model import hf_io
from roberta_jax.model.config import MODEL_TYPES, RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES, RobertaForSequenceClassification, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIG = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    type_vocab_size=2,
    num_labels=3,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
HEADS = [
    "RobertaModel",
    "RobertaForMaskedLM",
    "RobertaForCausalLM",
    "RobertaForSequenceClassification",
    "RobertaForMultipleChoice",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
]
# Every head of every model type: ("xlm-roberta", "XLMRobertaForMaskedLM"), ...
MODEL_HEADS = [
    (model_type, MODEL_TYPES[model_type] + head.removeprefix("Roberta")) for model_type in MODEL_TYPES for head in HEADS
]
TOL = 1e-4


def hf_config(architecture: str) -> dict:
    """HF_CONFIG as the architecture needs it: causal attention for the decoder, 2 QA outputs."""
    return dict(
        HF_CONFIG,
        is_decoder=architecture.endswith("ForCausalLM"),
        num_labels=2 if architecture.endswith("ForQuestionAnswering") else HF_CONFIG["num_labels"],
    )


def batch(architecture: str, seed: int = 0):
    """Right-padded rows of lengths 11, 7 and 3 (<s> ... </s>), token types mixed; [B, L] or
    [B, 2, L] for multiple choice."""
    rng = np.random.default_rng(seed)
    lengths = [11, 7, 3]
    ids = np.full((3, 11), 1, np.int64)
    mask = np.zeros((3, 11), np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, HF_CONFIG["vocab_size"], n)
        ids[row, 0], ids[row, n - 1] = 0, 2
        mask[row, :n] = 1
    types = (np.arange(11)[None] >= 5).astype(np.int64) * mask
    if architecture.endswith("ForMultipleChoice"):
        ids, mask, types = (np.stack([a, a[::-1]], axis=1) for a in (ids, mask, types))
        ids = np.where(mask == 1, ids, 1)
    return ids, mask, types


def hf_outputs(hf_model, ids, mask, types):
    """The logits (or last hidden state) of a PyTorch model as a tuple of numpy arrays."""
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        )
    if "start_logits" in out:
        return out.start_logits.numpy(), out.end_logits.numpy()
    if "logits" in out:
        return (out.logits.numpy(),)
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def flax_outputs(model, params, ids, mask, types):
    out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    return tuple(np.asarray(o) for o in (out if isinstance(out, tuple) else (out,)))


def assert_close(ours, theirs, mask):
    """Outputs agree at real (non-pad) positions; sentence-level outputs everywhere."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        if a.ndim >= mask.ndim and a.shape[: mask.ndim] == mask.shape:
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def make_hf_model(architecture: str, seed: int = 0, model_type: str = "roberta"):
    """A PyTorch model with every weight perturbed, so biases and norms are not trivially 0/1."""
    config = transformers.AutoConfig.for_model(model_type, **hf_config(architecture))
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("model_type, architecture", MODEL_HEADS)
def test_import_from_transformers(model_type, architecture, tmp_path):
    hf_model = make_hf_model(architecture, model_type=model_type)
    assert type(hf_model).__name__ == architecture
    hf_model.save_pretrained(tmp_path)
    params, model, report = hf_io.load_hf(str(tmp_path), architecture, strict=True)
    assert report.missing == report.unexpected == report.mismatched == []
    assert model.config.model_type == model_type
    ids, mask, types = batch(architecture)
    assert_close(flax_outputs(model, params, ids, mask, types), hf_outputs(hf_model, ids, mask, types), mask)


def perturbed_params(model, seed: int):
    params = init_params(model, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("model_type, architecture", MODEL_HEADS)
def test_export_to_transformers(model_type, architecture, tmp_path):
    config = RobertaConfig.from_dict(dict(hf_config(architecture), model_type=model_type))
    model = ARCHITECTURES[architecture](config)
    params = perturbed_params(model, seed=3)
    hf_io.save_hf(str(tmp_path), model, params)
    saved = RobertaConfig.from_json_file(str(tmp_path))
    assert (saved.model_type, saved.architectures) == (model_type, (architecture,))
    head = architecture.removeprefix(MODEL_TYPES[model_type])  # "ForMaskedLM", or "Model" for the encoder
    auto_class = getattr(transformers, "AutoModel" + head.removeprefix("Model"))
    hf_model, info = auto_class.from_pretrained(tmp_path, output_loading_info=True)
    hf_model.eval()
    assert type(hf_model).__name__ == architecture
    assert {k: v for k, v in info.items() if v} == {}, info
    ids, mask, types = batch(architecture, seed=1)
    assert_close(flax_outputs(model, params, ids, mask, types), hf_outputs(hf_model, ids, mask, types), mask)


def test_export_loads_with_auto_classes(tmp_path):
    config = RobertaConfig.from_dict(HF_CONFIG).replace(id2label={0: "neg", 1: "neu", 2: "pos"})
    model = RobertaForSequenceClassification(config)
    hf_io.save_hf(str(tmp_path), model, perturbed_params(model, seed=5))
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(hf_model).__name__ == "RobertaForSequenceClassification"
    assert hf_model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_mlm_checkpoint_into_a_new_classifier_initialises_only_the_head(tmp_path):
    make_hf_model("RobertaForMaskedLM").save_pretrained(tmp_path)
    params, _, report = hf_io.load_hf(str(tmp_path), "RobertaForSequenceClassification")
    assert sorted(report.missing) == [
        "classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias", "classifier.out_proj.weight",
    ]
    assert sorted(report.unexpected) == ["lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight",
                                         "lm_head.layer_norm.bias", "lm_head.layer_norm.weight"]
    assert params["classifier"]["out_proj"]["kernel"].shape == (32, 3)
    with pytest.raises(ValueError, match="classifier.dense.weight"):
        hf_io.load_hf(str(tmp_path), "RobertaForSequenceClassification", strict=True)


def test_base_model_checkpoint_loads_under_the_roberta_prefix(tmp_path):
    hf_base = make_hf_model("RobertaModel")
    hf_base.save_pretrained(tmp_path)
    params, model, report = hf_io.load_hf(str(tmp_path), "RobertaForTokenClassification")
    assert sorted(report.missing) == ["classifier.bias", "classifier.weight"]
    assert report.unexpected == ["pooler.dense.bias", "pooler.dense.weight"]
    np.testing.assert_array_equal(
        params["roberta"]["embeddings"]["word_embeddings"]["embedding"],
        hf_base.embeddings.word_embeddings.weight.detach().numpy(),
    )


def test_mis_shaped_checkpoint_lists_the_offending_names(tmp_path):
    make_hf_model("RobertaForMaskedLM").save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        hf_io.load_hf(str(tmp_path), "RobertaForMaskedLM", intermediate_size=40)
    message = str(err.value)
    for layer in (0, 1):
        name = f"roberta.encoder.layer.{layer}.intermediate.dense.weight"
        assert f"{name}: checkpoint (37, 32) vs model (40, 32)" in message
        assert f"roberta.encoder.layer.{layer}.output.dense.weight" in message
    assert "embeddings" not in message


def test_missing_checkpoint_file_is_reported(tmp_path):
    RobertaConfig().to_json_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf_io.load_hf(str(tmp_path), "RobertaForMaskedLM")
