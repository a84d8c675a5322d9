"""Everything a run builds from its config: template, atlas, model, optimizer, mesh and shardings."""
from __future__ import annotations

import dataclasses
import pathlib

import jax
from flax import nnx

from headsup_jax.geometry import UVAtlas, build_atlas, load_template
from headsup_jax.model.headsup import HeadsUp
from headsup_jax.train.data import template_spec
from headsup_jax.train.optim import make_optimizer
from headsup_jax.train.sharding import make_mesh, state_shardings


@dataclasses.dataclass
class Experiment:
    config: object
    template_vertices: object  # [V, 3]
    atlas: UVAtlas
    mesh: jax.sharding.Mesh
    graphdef: object  # of (model, optimizer)
    state: nnx.State  # sharded over `mesh`
    shardings: nnx.State

    def model(self, state: nnx.State | None = None) -> HeadsUp:
        return nnx.merge(self.graphdef, self.state if state is None else state)[0]


def build_model(config, cache_dir=None) -> tuple[HeadsUp, UVAtlas, object]:
    template = load_template(template_spec(config))
    atlas = build_atlas(template, config.atlas_resolution, cache_dir=cache_dir)
    model = HeadsUp(config, template.vertices, atlas, rngs=nnx.Rngs(config.seed))
    return model, atlas, template.vertices


def build_experiment(config, workdir=None, devices=None) -> Experiment:
    """Model and optimizer initialised from config.seed and laid out on the mesh of config.mesh."""
    cache = pathlib.Path(workdir) / "atlas_cache" if workdir else None
    model, atlas, vertices = build_model(config, cache)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, config.on_nonfinite == "skip"), wrt=nnx.Param)
    mesh = make_mesh(**config.mesh, devices=devices)
    graphdef, state = nnx.split((model, optimizer))
    shardings = state_shardings(state, mesh, config.sharding_rules)
    state = jax.device_put(state, shardings)
    return Experiment(config, vertices, atlas, mesh, graphdef, state, shardings)
