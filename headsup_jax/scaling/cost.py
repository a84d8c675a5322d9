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


def _flops(lowered) -> float:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


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
    from headsup_jax.scaling.memory_plan import _abstract_step  # the memory plan's abstract train step

    config = _one_device_config(config)
    template, atlas = _template_and_atlas(config)
    tx = make_optimizer(config.optim, config.on_nonfinite == "skip")
    mesh = make_mesh(**config.mesh, devices=jax.devices()[:1])
    experiment, state, batch = _abstract_step(config, template, atlas, tx, mesh, 1)
    params = _param_count(nnx.merge(experiment.graphdef, state)[0])
    return dict(params=params, flops_per_example=_flops(TrainStep(experiment).lower(state, batch)),
                gaussians=int(atlas.count))


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
    return dict(params=_param_count(abstract), flops_per_example=_flops(forward.lower(state, images, K, w2c)),
                gaussians=int(atlas.count))
