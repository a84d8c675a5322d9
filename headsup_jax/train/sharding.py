"""Device mesh ("data", "fsdp", "tensor") and shardings from logical axis names.

Parameters carry logical names in their `logical_axes` metadata (see model/layers.py). A rule maps a
logical name to mesh axes; a dimension is sharded only if the mesh axes divide it and are not yet
used by another dimension. FSDP then shards each parameter's largest still-free dimension that
"fsdp" divides. The batch is split over data x fsdp.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from headsup_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh over `devices` (default: all); one of the sizes may be -1 (the rest of the devices)."""
    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, tensor]
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1 or len(devices) % known:
        raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not fit {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {len(devices)} devices")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_axes(rule) -> tuple[str, ...]:
    return (rule,) if isinstance(rule, str) else tuple(rule or ())


def logical_to_spec(names, shape, rules, mesh: Mesh, fsdp: bool = True) -> PartitionSpec:
    """PartitionSpec of an array of `shape` whose dimensions have logical `names` (None: unnamed).

    Stacked (scanned) layers have one more leading dimension than names: it stays unsharded."""
    names = tuple(names or ())
    names = (None,) * (len(shape) - len(names)) + names
    rules = dict(rules)
    used, spec = set(), []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in _mesh_axes(rules.get(name)) if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    if fsdp and mesh.shape["fsdp"] > 1 and "fsdp" not in used:
        free = [i for i, s in enumerate(spec) if s is None and shape[i] % mesh.shape["fsdp"] == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(state, mesh: Mesh, rules):
    """NamedShardings for an `nnx.State` (parameters and optimizer state alike), from their metadata."""
    def one(v):
        if isinstance(v, nnx.Variable):
            value = v.get_value() if hasattr(v, "get_value") else v.value
            spec = logical_to_spec(v.get_metadata().get("logical_axes"), np.shape(value), rules, mesh)
            return v.replace(NamedSharding(mesh, spec)) if hasattr(v, "replace") else NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local_batch, mesh: Mesh):
    """Assembles this process's part of the batch into global arrays sharded over data x fsdp."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(one, local_batch)
