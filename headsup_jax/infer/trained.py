"""A trained model from a run's workdir (its saved config and newest, or a given, checkpoint).

    trained = load_trained("runs/tiny")             # or load_trained("runs/tiny", step=2000)
    gaussians, aux = trained.model(images, K, world_to_cam)   # [B, N, H, W, 3], [B, N, 3, 3], [B, N, 4, 4]

The parameters are restored onto this process's devices (a run saved sharded over 8 devices or several
hosts loads on one CPU), the template and atlas rebuilt from the recorded template (refused if it no
longer loads the same geometry), and nothing of the optimizer is kept.
"""
from __future__ import annotations

import dataclasses
import json

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from headsup_jax.errors import ConfigError
from headsup_jax.geometry import HeadTemplate, UVAtlas
from headsup_jax.model.headsup import HeadsUp


@dataclasses.dataclass
class TrainedModel:
    config: ConfigDict
    model: HeadsUp  # parameters on this process's first device
    atlas: UVAtlas
    template: HeadTemplate
    step: int
    workdir: epath.Path
    experiment: object  # train.experiment.Experiment on one device, and its restored state:
    state: nnx.State  # what the shared evaluators (eval.evaluate) take
    _forwards: dict = dataclasses.field(default_factory=dict, repr=False)

    def forward(self, with_aux: bool = False):
        """The model's jitted forward pass (`infer.reconstruct.forward`), built once per TrainedModel: the
        reconstructions of one process compile once per input shape, not once per call."""
        from headsup_jax.infer.reconstruct import forward

        if with_aux not in self._forwards:
            self._forwards[with_aux] = forward(self.model, with_aux)
        return self._forwards[with_aux]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the model was trained on."""
        return tuple(self.config.data.image_size)


def load_trained(workdir, step: int | None = None) -> TrainedModel:
    """The model of the run in `workdir` (local or gs://) at its newest checkpoint, or `step`."""
    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import build_experiment
    from headsup_jax.train.workdir import check_template

    workdir = epath.Path(workdir)
    saved = workdir / "config.json"
    if not saved.exists():
        raise ConfigError(f"{saved}: not found; --workdir must be a training run's folder")
    config = ConfigDict(json.loads(saved.read_text()))
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    experiment = build_experiment(config, workdir, devices=jax.local_devices()[:1])
    check_template(config, experiment.template, workdir)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    try:
        if ckpt.latest_step is None:
            raise ConfigError(f"{workdir}: no checkpoint to load (train first)")
        step, state = ckpt.restore(experiment.state, step)
    finally:
        ckpt.close()
    model = nnx.merge(experiment.graphdef, state)[0]
    return TrainedModel(config, model, experiment.atlas, experiment.template, step, workdir, experiment, state)
