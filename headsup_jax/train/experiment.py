"""Everything a run builds from its config: template, atlas, model, optimizer, mesh and shardings."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
from etils import epath
from flax import nnx

from headsup_jax.errors import ConfigError
from headsup_jax.geometry import HeadTemplate, UVAtlas, build_atlas, load_template
from headsup_jax.geometry.features import FEATURES, feature_texels
from headsup_jax.model.headsup import HeadsUp
from headsup_jax.train.objective import Supervision
from headsup_jax.train.optim import make_optimizer
from headsup_jax.train.sharding import make_mesh, state_shardings


@dataclasses.dataclass
class Experiment:
    config: object
    template: HeadTemplate
    atlas: UVAtlas
    mesh: jax.sharding.Mesh
    graphdef: object  # of (model, optimizer)
    state: nnx.State  # sharded over `mesh`
    shardings: nnx.State
    supervision: Supervision  # frozen inputs of the objective (replicated)

    @property
    def template_vertices(self) -> np.ndarray:  # [V, 3]
        return self.template.vertices

    def model(self, state: nnx.State | None = None) -> HeadsUp:
        return nnx.merge(self.graphdef, self.state if state is None else state)[0]


def run_template(config) -> HeadTemplate:
    """The config's template (`config.template`; "auto" must be resolved first, see
    train.workdir.resolve_template), with `config.template_landmarks` (a JSON list of 68 vertex indices)
    for templates that have none."""
    if config.template == "auto":
        from headsup_jax.train.workdir import resolve_template

        config = resolve_template(config)
    template = load_template(config.template)
    path = config.get("template_landmarks", "")
    if path:
        try:
            landmarks = np.asarray(json.loads(epath.Path(path).read_text()), np.int32)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: config.template_landmarks must be a JSON list of 68 vertex indices ({e})")
        if landmarks.shape != (68,):
            raise ConfigError(f"{path}: config.template_landmarks needs 68 vertex indices, got shape {landmarks.shape}")
        template = dataclasses.replace(template, landmarks=landmarks)  # HeadTemplate checks the indices
    return template


def template_and_atlas(config, cache_dir=None) -> tuple[HeadTemplate, UVAtlas]:
    template = run_template(config)
    return template, build_atlas(template, config.atlas_resolution, cache_dir=cache_dir)


def new_model(config, template: HeadTemplate, atlas: UVAtlas) -> HeadsUp:
    """The model of `config`, initialised from config.seed."""
    return HeadsUp(config, template.vertices, atlas, rngs=nnx.Rngs(config.seed))


def build_model(config, cache_dir=None) -> tuple[HeadsUp, UVAtlas, HeadTemplate]:
    """The model of `config` (eager) with its atlas and template."""
    template, atlas = template_and_atlas(config, cache_dir)
    return new_model(config, template, atlas), atlas, template


def build_experiment(config, workdir=None, devices=None) -> Experiment:
    """Model and optimizer initialised from config.seed and laid out on the mesh of config.mesh.

    The state is initialised inside one jitted function whose outputs carry the target shardings: each
    device creates only its shards (no host copy of the whole model; one compilation instead of one
    per initialiser). The values equal an eager initialisation's: the same keys, the same ops."""
    template, atlas = template_and_atlas(config, _atlas_cache(workdir))
    tx = make_optimizer(config.optim, config.on_nonfinite == "skip")

    def create():
        model = new_model(config, template, atlas)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    mesh = make_mesh(**config.mesh, devices=devices)
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    shardings = state_shardings(abstract, mesh, config.sharding_rules)
    state = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
    return Experiment(config, template, atlas, mesh, graphdef, state, shardings,
                      build_supervision(config, template, atlas))


def _atlas_cache(workdir):
    """workdir/atlas_cache for a local workdir; a bucket workdir caches under ~/.cache/headsup."""
    if workdir is None:
        return None
    workdir = epath.Path(workdir)
    return workdir / "atlas_cache" if "://" not in str(workdir) else epath.Path("~/.cache/headsup").expanduser()


def build_supervision(config, template, atlas) -> Supervision:
    """Eye and mouth texels of the atlas (only when a region weight is > 0: they need the template's
    68 landmarks), and the LPIPS network when config.loss.lpips_weights names one."""
    lpips = None
    if config.loss.lpips_weights:
        from headsup_jax.model.lpips import load_lpips

        lpips = load_lpips(config.loss.lpips_weights)
    if any(config.loss.regions[name] for name in FEATURES):
        try:
            texels = feature_texels(template, atlas)
        except ValueError as e:
            raise ConfigError(f"{e}; config.loss.regions = {dict(config.loss.regions)} weights the eyes and mouth: "
                              "give the template's landmarks with config.template_landmarks=LANDMARKS.json "
                              "or turn the region losses off (config.loss.regions.eyes=0, .mouth=0)") from e
    else:
        texels = np.zeros((atlas.count, len(FEATURES)), np.float32)
    return Supervision(texels, lpips)
