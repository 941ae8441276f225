"""Mesh construction and the logical-axis table of the default config."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from roberta_jax.model.config import preset
from roberta_jax.model.heads import RobertaForMaskedLM, dummy_inputs
from roberta_jax.train import sharding
from roberta_jax.train.config import default_config

RULES = sharding.axis_rules(default_config().logical_axis_rules)


def test_mesh_shape_fills_the_one_free_axis():
    assert sharding.mesh_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 2)
    assert sharding.mesh_shape({"fsdp": 8}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="needs 4 devices, found 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.mesh_shape({"model": 2}, 8)


def test_roberta_base_params_shard_where_they_divide():
    model = RobertaForMaskedLM(preset("base"))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_inputs(model)))["params"]
    mesh = jax.sharding.Mesh([[[jax.devices()[0]]]], sharding.MESH_AXES)
    # A 1-device mesh shows the table itself; divisibility is checked against sizes of 2 below.
    specs = jax.tree.map(lambda s: s.spec, sharding.logical_shardings(abstract, mesh, RULES))
    layer = specs["roberta"]["encoder"]["layer_0"]
    assert layer["attention"]["self"]["query"]["kernel"] == P("fsdp", "tensor")
    assert layer["output"]["dense"]["kernel"] == P("tensor", "fsdp")


def test_axes_that_do_not_divide_a_dimension_are_dropped():
    mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)

    def spec(partition, shape):
        return sharding.divisible(jax.sharding.NamedSharding(mesh, partition), shape).spec

    assert spec(P("tensor", "fsdp"), (50265, 768)) == P(None, "fsdp")  # odd vocabulary: replicated rows
    assert spec(P("tensor", "fsdp"), (50268, 768)) == P("tensor", "fsdp")
    assert spec(P(("data", "fsdp")), (6, 3)) == P(None, None)  # 6 rows over 4 devices
    assert spec(P(("data", "fsdp")), (8,)) == P(("data", "fsdp"))


def test_axis_rules_take_a_json_record_and_reject_an_unknown_mesh_axis():
    # A config read back from train_config.json holds lists where the default holds tuples.
    record = [["batch", ["data", "fsdp"]], ["length", None], ["embed", "fsdp"]]
    assert sharding.axis_rules(record) == (("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"))
    assert sharding.axis_rules(default_config().logical_axis_rules) == RULES
    with pytest.raises(ValueError, match=r"'mlp' maps to \['model'\], not axes of the mesh"):
        sharding.axis_rules([("embed", "fsdp"), ("mlp", ("tensor", "model"))])


def test_batch_axes_are_the_first_rule_for_batch():
    def axes(*rules):
        return sharding.batch_axes(sharding.axis_rules(rules))

    assert sharding.batch_axes(RULES) == ("data", "fsdp")
    assert axes(("embed", "fsdp"), ("batch", "data"), ("batch", "fsdp")) == ("data",)
    assert axes(("batch", None)) == axes(("embed", "fsdp")) == ()
