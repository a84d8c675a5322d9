"""Per-subject fitting of a capture (`headsup fit`): the optimisation-based reconstruction, from the
template or refined from a trained model's prediction.

    head = fit_capture("captures/alice", config=load_config("configs/headsup.py:tiny")).head
    head = fit_capture("captures/alice", trained=load_trained("runs/tiny"), steps=100).head  # refine

The same Gaussians, parameterisation, renderer and losses as training (`eval.fit.SubjectFitter`, Adam on
the raw UV map). With a trained model the views are read at its image size and the fit starts from its
prediction from the same views; without one, from the config's template (grey, zero predictions). A
capture without masks is fitted on whole frames (no mask loss).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from headsup_jax.data.capture import Capture, load_capture
from headsup_jax.eval.fit import FitSettings, SubjectFitter
from headsup_jax.infer.reconstruct import load_views, pick_views, stack_views
from headsup_jax.render.types import Gaussians

DEFAULT_STEPS = {"template": 600, "model": 100}  # from scratch; refining a feed-forward prediction


@dataclasses.dataclass
class FittedHead:
    head: Gaussians  # [G] NumPy
    losses: np.ndarray  # [steps] the objective before each update
    seconds: float  # optimisation wall time (compilation excluded)
    input_ids: list[str]
    start: str  # "template" or "model"


def fit_capture(capture, *, trained=None, config=None, views=None, num_views: int | None = None,
                steps: int | None = None, lr: float = FitSettings.lr, height: int | None = None) -> FittedHead:
    """A capture (folder or `Capture`) -> its fitted head Gaussians. Give `trained` (refine its prediction)
    or `config` (fit from its template). Views: `views` indices or `num_views` spread over the rig (default
    all); images at the model's size, or `height` (default 64) with the camera's aspect without a model."""
    from headsup_jax.train.experiment import template_and_atlas

    if (trained is None) == (config is None):
        raise ValueError("give exactly one of trained= (refine its prediction) or config= (fit from the template)")
    capture = capture if isinstance(capture, Capture) else load_capture(capture)
    indices = pick_views(capture, views, num_views or len(capture.cameras))
    if trained is not None:
        config, template, atlas = trained.config, trained.template, trained.atlas
        inputs = load_views(capture, indices, *trained.image_size)
    else:
        template, atlas = template_and_atlas(config)
        inputs = load_views(capture, indices, height or 64)
    images, K, w2c = stack_views(inputs)  # [V, H, W, 3], [V, 3, 3], [V, 4, 4]
    has_masks = inputs[0].mask is not None
    masks = np.stack([v.mask for v in inputs]) if has_masks else np.ones(images.shape[:3], np.float32)
    config = config.copy_and_resolve_references()
    if not has_masks:
        config.loss.mask = 0.0
    init = None
    if trained is not None:
        _, aux = trained.forward(with_aux=True)(images[None], K[None], w2c[None])
        init = np.asarray(aux["uv_map"][0])
    start = "template" if init is None else "model"
    fitter = SubjectFitter(template.vertices, atlas, config, FitSettings(steps or DEFAULT_STEPS[start], lr))
    result = fitter.fit(images, masks, K, w2c, init=init)
    head = jax.tree.map(lambda x: np.asarray(x, np.float32), fitter.gaussians(result.uv_map))
    return FittedHead(head, result.losses, result.seconds, [v.camera_id for v in inputs], start)
