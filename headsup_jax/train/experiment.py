"""Everything a run builds from its config: template, atlas, model, optimizer, mesh and shardings."""
from __future__ import annotations

import dataclasses
import pathlib

import jax
from flax import nnx

from headsup_jax.geometry import UVAtlas, build_atlas, load_template
from headsup_jax.geometry.features import feature_texels
from headsup_jax.model.headsup import HeadsUp
from headsup_jax.train.data import template_spec
from headsup_jax.train.objective import Supervision
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
    supervision: Supervision  # frozen inputs of the objective (replicated)

    def model(self, state: nnx.State | None = None) -> HeadsUp:
        return nnx.merge(self.graphdef, self.state if state is None else state)[0]


def build_model(config, cache_dir=None) -> tuple[HeadsUp, UVAtlas, object]:
    template = load_template(template_spec(config))
    atlas = build_atlas(template, config.atlas_resolution, cache_dir=cache_dir)
    model = HeadsUp(config, template.vertices, atlas, rngs=nnx.Rngs(config.seed))
    return model, atlas, template.vertices


def build_experiment(config, workdir=None, devices=None) -> Experiment:
    """Model and optimizer initialised from config.seed and laid out on the mesh of config.mesh.

    The state is initialised inside one jitted function whose outputs carry the target shardings: each
    device creates only its shards (no host copy of the whole model; one compilation instead of one
    per initialiser). The values equal an eager initialisation's: the same keys, the same ops."""
    cache = pathlib.Path(workdir) / "atlas_cache" if workdir else None
    template = load_template(template_spec(config))
    atlas = build_atlas(template, config.atlas_resolution, cache_dir=cache)
    tx = make_optimizer(config.optim, config.on_nonfinite == "skip")

    def create():
        model = HeadsUp(config, template.vertices, atlas, rngs=nnx.Rngs(config.seed))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    mesh = make_mesh(**config.mesh, devices=devices)
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    shardings = state_shardings(abstract, mesh, config.sharding_rules)
    state = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
    return Experiment(config, template.vertices, atlas, mesh, graphdef, state, shardings,
                      build_supervision(config, template, atlas))


def build_supervision(config, template, atlas) -> Supervision:
    """Eye and mouth texels of the atlas, and the LPIPS network when config.loss.lpips_weights names one."""
    lpips = None
    if config.loss.lpips_weights:
        from headsup_jax.model.lpips import load_lpips

        lpips = load_lpips(config.loss.lpips_weights)
    return Supervision(feature_texels(template, atlas), lpips)
