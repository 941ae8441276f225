"""The device mesh and the logical-axis rules that map the layers' axis names onto it.

Layers name their axes (`batch`, `length`, `embed`, `mlp`, `heads`, `vocab`); a run's
`logical_axis_rules` (a config field; `train/config.py` holds the default table) map them onto a
mesh of (`data`, `fsdp`, `tensor`). Pure data parallel, FSDP and tensor parallel are the same code
under another mesh shape:

    data=8              params replicated, batch split 8 ways
    fsdp=8              batch split 8 ways, params and optimizer state split over `embed`
    data=2 fsdp=2 tensor=2   all three; `tensor` splits heads, the FFN and the vocabulary

When a mesh axis is already taken by an earlier dimension of the same array, Flax skips to the
next rule, so activations [batch, length, embed] shard batch over (data, fsdp) and leave embed
whole, while a kernel [embed, mlp] shards embed over fsdp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roberta_jax.model.tpu_attention import Placement

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]


def axis_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """A config's rules as Flax takes them: ((logical name, mesh axis | (mesh axes...) | None), ...).
    Lists (as a config record in JSON holds them) become tuples; a mesh axis outside `MESH_AXES`
    is an error naming it."""
    out = []
    for name, target in rules:
        axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"logical_axis_rules: {name!r} maps to {unknown}, not axes of the mesh {MESH_AXES}.")
        out.append((str(name), target if target is None or isinstance(target, str) else tuple(target)))
    return tuple(out)


def mesh_axes(rules: Rules, logical: str) -> tuple[str, ...]:
    """The mesh axes the `logical` axis is split over (its first rule)."""
    for name, target in rules:
        if name == logical:
            return () if target is None else (target,) if isinstance(target, str) else tuple(target)
    return ()


def batch_axes(rules: Rules) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis is split over (the first rule for `batch`)."""
    return mesh_axes(rules, "batch")


def batch_shards(mesh_sizes: Mapping[str, int], rules: Rules) -> int:
    """How many ways the batch is split: the product of the sizes (`mesh.shape`) of its mesh axes."""
    return int(np.prod([mesh_sizes[a] for a in batch_axes(rules)]))


def attention_placement(mesh: Mesh, rules: Rules) -> Placement:
    """Where attention's [B, L, N, D] tensors live: the batch over the batch axes, the heads over the `heads`
    axes the batch leaves free."""
    batch = batch_axes(rules)
    return Placement(mesh, batch, tuple(a for a in mesh_axes(rules, "heads") if a not in batch))


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor) from a mapping where at most one size is -1 (the rest)."""
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}.")
    sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide by the fixed mesh axes (product {known}).")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        mesh = dict(zip(MESH_AXES, sizes))
        raise ValueError(f"mesh {mesh} needs {int(np.prod(sizes))} devices, found {num_devices}.")
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all, across every host)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(axes, len(devices))
    # Auto axes: XLA propagates shardings from the annotated params, inputs and constraints.
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (as
    `jax.eval_shape(model.init ...)` returns them); unboxed leaves are replicated."""
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_tree), mesh, rules)
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_tree))
    return jax.tree.map(lambda s, shape: divisible(s, shape), shardings, shapes,
                        is_leaf=lambda x: isinstance(x, NamedSharding))


def divisible(named: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Drops the mesh axes of any dimension they do not divide (roberta-base's 50265-row
    vocabulary, 514 positions, a one-row token-type table): that dimension is replicated."""
    spec = []
    for dim, axes in zip(shape, tuple(named.spec) + (None,) * (len(shape) - len(named.spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        size = int(np.prod([named.mesh.shape[a] for a in names])) if names else 1
        spec.append(axes if dim % size == 0 else None)
    return NamedSharding(named.mesh, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Arrays whose first dimension is the global batch."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
