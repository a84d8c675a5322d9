"""Parameters and FLOPs per example of a config, from XLA's cost analysis of abstract shapes (nothing allocated).

FLOPs come from the lowered (unoptimised) HLO for one example on one device, with the transformer's layers
unrolled and without remat (cost analysis counts a loop body once, and remat recomputation is no model
FLOP). Loops inside the renderer (its compositing) are still counted once, so the renderer's share is a
lower bound; it is the same for every run of a sweep at one image size and atlas.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from headsup_jax.train.experiment import new_model, template_and_atlas
from headsup_jax.train.optim import make_optimizer
from headsup_jax.train.sharding import make_mesh
from headsup_jax.train.step import TrainStep
from headsup_jax.train.workdir import resolve_template


def _one_device_config(config):
    flat = resolve_template(config)
    flat.model.scan_layers, flat.model.remat = False, False
    flat.mesh = dict(data=1, fsdp=1, tensor=1)
    return flat


def analysis_flops(analysis, missing: float | None = None) -> float:
    """The "flops" of a cost_analysis() result (a dict, or a list of one); `missing` when it has none (some
    backends' compiled programs), else a KeyError."""
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    if "flops" not in analysis and missing is not None:
        return missing
    return float(analysis["flops"])


def abstract_train_step(config, template, atlas, tx, mesh, batch: int):
    """(experiment namespace for TrainStep, abstract sharded state, abstract sharded batch) of `config` on `mesh`."""
    import types

    from headsup_jax.train.experiment import build_supervision
    from headsup_jax.train.sharding import batch_sharding, state_shardings

    def create():
        model = new_model(config, template, atlas)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    shardings = state_shardings(abstract, mesh, config.sharding_rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    H, W = config.data.image_size
    N, M = config.data.num_inputs, config.data.num_targets
    cams = lambda n: {"K": ((batch, n, 3, 3), jnp.float32), "world_to_cam": ((batch, n, 4, 4), jnp.float32)}
    shapes = {"inputs": ((batch, N, H, W, 3), jnp.float32), "targets": ((batch, M, H, W, 3), jnp.float32),
              "target_masks": ((batch, M, H, W), jnp.bool_), "input_cameras": cams(N), "target_cameras": cams(M)}
    abstract_batch = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s[0], s[1], sharding=batch_sharding(mesh, len(s[0]))), shapes,
        is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple))
    experiment = types.SimpleNamespace(config=config, graphdef=graphdef, mesh=mesh, shardings=shardings,
                                       supervision=build_supervision(config, template, atlas))
    return experiment, state, abstract_batch


def model_flops_per_example(config, template, atlas, tx) -> float:
    """FLOPs of one train step (forward, backward, update) for one example on one device, layers unrolled
    and without remat, from the lowered HLO (see the module docstring)."""
    config = _one_device_config(config)
    mesh = make_mesh(**config.mesh, devices=jax.devices()[:1])
    experiment, state, batch = abstract_train_step(config, template, atlas, tx, mesh, 1)
    return analysis_flops(TrainStep(experiment).lower(state, batch).cost_analysis())


_TEMPLATES = {}  # (template, landmarks, atlas resolution) -> (template, atlas): a sweep's sizes share them


def _template_and_atlas(config):
    key = (config.template, config.get("template_landmarks", ""), config.atlas_resolution)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = template_and_atlas(config)
    return _TEMPLATES[key]


def _abstract_model(config):
    template, atlas = _template_and_atlas(config)
    return template, atlas, nnx.eval_shape(lambda: new_model(config, template, atlas))


def _param_count(model) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def parameter_count(config) -> int:
    """Trainable parameters of `config`'s model (abstract: nothing allocated, nothing compiled)."""
    return _param_count(_abstract_model(resolve_template(config))[2])


def train_step_cost(config) -> dict:
    """{"params", "flops_per_example" (one train step: forward, backward, Adam), "gaussians"} of `config`."""
    config = resolve_template(config)
    template, atlas = _template_and_atlas(config)
    tx = make_optimizer(config.optim, config.on_nonfinite == "skip")
    return dict(params=_param_count(_abstract_model(config)[2]),
                flops_per_example=model_flops_per_example(config, template, atlas, tx), gaussians=int(atlas.count))


def forward_cost(config) -> dict:
    """{"params", "flops_per_example" (the model's forward for one example, renderer excluded), "gaussians"}."""
    config = _one_device_config(config)
    _, atlas, abstract = _abstract_model(config)
    graphdef, state = nnx.split(abstract)
    n, (h, w) = config.data.num_inputs, config.data.image_size
    images = jax.ShapeDtypeStruct((1, n, h, w, 3), jnp.float32)
    K = jax.ShapeDtypeStruct((1, n, 3, 3), jnp.float32)
    w2c = jax.ShapeDtypeStruct((1, n, 4, 4), jnp.float32)
    forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)[0].means)
    flops = analysis_flops(forward.lower(state, images, K, w2c).cost_analysis())
    return dict(params=_param_count(abstract), flops_per_example=flops,
                gaussians=int(atlas.count))
