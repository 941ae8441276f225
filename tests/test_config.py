"""RobertaConfig: HF field names and defaults, config.json round trips, clear errors."""

import json

import pytest

from roberta_jax.model.config import RobertaConfig, preset

transformers = pytest.importorskip("transformers")


def test_defaults_are_transformers_defaults_for_roberta_base():
    ours, theirs = RobertaConfig().to_dict(), transformers.RobertaConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                "pad_token_id", "bos_token_id", "eos_token_id"):
        assert ours[key] == theirs[key], key
    # roberta-base's real checkpoint values, which transformers' bare defaults (BERT's) do not have.
    assert (ours["max_position_embeddings"], ours["layer_norm_eps"], ours["type_vocab_size"]) == (514, 1e-5, 1)


def test_save_pretrained_config_round_trips_exactly(tmp_path):
    hf = transformers.RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, layer_norm_eps=1e-5, id2label={0: "NEG", 1: "POS"},
        label2id={"NEG": 0, "POS": 1}, problem_type="single_label_classification",
        architectures=["RobertaForSequenceClassification"],
    )
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    ours = RobertaConfig.from_json_file(str(tmp_path))
    assert ours.num_labels == 2 and ours.id2label == {0: "NEG", 1: "POS"}
    assert ours.architectures == ("RobertaForSequenceClassification",)
    assert ours.problem_type == "single_label_classification"
    out = tmp_path / "again"
    out.mkdir()
    ours.to_json_file(str(out))
    assert json.loads((out / "config.json").read_text()) == written


def test_older_config_keys_survive_the_round_trip():
    # roberta-base's own config.json (transformers 2.x era) names keys transformers 5 dropped.
    old = {"architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
           "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
           "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
           "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12,
           "num_hidden_layers": 12, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265,
           "position_embedding_type": "absolute", "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
           "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "transformers_version": "4.6.0.dev0", "use_cache": True}
    again = RobertaConfig.from_dict(old).to_dict()
    assert {k: again[k] for k in old} == old


def test_our_config_json_loads_in_transformers(tmp_path):
    ours = preset("large", id2label={0: "B-PER", 1: "O", 2: "I-PER"}, problem_type="single_label_classification",
                  architectures=("RobertaForTokenClassification",))
    ours.to_json_file(str(tmp_path))
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == "RobertaConfig"
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size) == (1024, 24, 16, 4096)
    assert hf.id2label == {0: "B-PER", 1: "O", 2: "I-PER"} and hf.num_labels == 3
    assert hf.architectures == ["RobertaForTokenClassification"]
    again = RobertaConfig.from_dict(hf.to_dict())
    assert again == ours and again.id2label == ours.id2label and again.label2id == ours.label2id


def test_num_labels_makes_label_maps_like_transformers():
    ours = RobertaConfig.from_dict({"num_labels": 5})
    assert ours.id2label == transformers.RobertaConfig(num_labels=5).id2label
    assert preset("micro", num_labels=1).num_labels == 1


def test_unimplemented_settings_are_errors():
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'.*not implemented"):
        RobertaConfig(position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="hidden_act"):
        RobertaConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="not a multiple"):
        RobertaConfig(hidden_size=100, num_attention_heads=12)


def test_unknown_preset_field_names_the_nearest_one():
    with pytest.raises(ValueError, match="did you mean 'hidden_dropout_prob'"):
        preset("micro", hiden_dropout_prob=0.0)
    with pytest.raises(ValueError, match="did you mean 'large'"):
        preset("larg")


def test_presets_have_the_published_sizes():
    import jax

    from roberta_jax.model.heads import RobertaForMaskedLM, init_params

    def count(name):
        shapes = jax.eval_shape(lambda: init_params(RobertaForMaskedLM(preset(name)), jax.random.key(0)))
        return sum(x.size for x in jax.tree.leaves(shapes))

    assert round(count("base") / 1e6) == 125
    assert round(count("large") / 1e6) == 355
