"""The reference points every fidelity table shows beside the model, on the same views:

- the template painted in the mean head colour of the training data (what a model must beat at all);
- per-subject fitting (eval.fit) on the model's N input views, and on all of a subject's views (the
  ceiling of the representation: the same Gaussians fitted to everything, including the scored views).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.eval.fit import FitSettings, SubjectFitter
from headsup_jax.eval.metrics import fidelity_metrics
from headsup_jax.geometry import anchor
from headsup_jax.render.sh import rgb_to_sh
from headsup_jax.train.data import model_inputs
from headsup_jax.train.objective import composite_on_background, render_views


def mean_head_colour(batch: dict) -> np.ndarray:
    """Mean RGB of the head pixels (mask > 0.5) of a batch's target views -> [3]"""
    mask = np.asarray(batch["target_masks"]) > 0.5  # [B, M, H, W]
    return np.asarray(batch["targets"])[mask].mean(0)


_BASELINES = {}  # id(experiment) -> (experiment, jitted template rendering): one compilation per run


def _baseline_fn(experiment):
    if id(experiment) not in _BASELINES:
        config = experiment.config
        background = jnp.asarray(config.loss.background, jnp.float32)

        def run(colour, inputs):
            sh = jnp.broadcast_to(rgb_to_sh(colour), (experiment.atlas.count, 1, 3))
            head = anchor(experiment.template_vertices, experiment.atlas, sh=sh)
            cams, targets = inputs["target_cameras"], inputs["targets"]  # [B, M, H, W, 3]
            B, _, H, W, _ = targets.shape
            gaussians = jax.tree.map(lambda x: jnp.broadcast_to(x, (B, *x.shape)), head)
            renders = render_views(gaussians, cams["K"], cams["world_to_cam"], H, W, background, config.render)
            target = composite_on_background(targets, inputs["target_masks"], background)
            return fidelity_metrics(renders.rgb, target, inputs["target_masks"])

        _BASELINES[id(experiment)] = (experiment, jax.jit(run))
    return _BASELINES[id(experiment)][1]


def template_baseline(experiment, batch: dict, colour) -> dict:
    """The reference a trained model must beat: the template's Gaussians (zero predictions) painted one
    colour, rendered in the batch's target views -> image metrics name -> [B, M] (as `evaluate_batch`)."""
    inputs = jax.tree.map(jnp.asarray, model_inputs(batch))
    metrics = _baseline_fn(experiment)(jnp.asarray(colour, jnp.float32), inputs)
    return jax.tree.map(np.asarray, metrics)


def fit_reference(experiment, batch: dict, on: str = "inputs", settings: FitSettings = FitSettings(),
                  fitter: SubjectFitter | None = None) -> dict:
    """Each subject of `batch` fitted on its input views (`on="inputs"`) or on inputs and targets together
    (`on="all"`), scored on its target views -> {"metrics": name -> [B, M], "renders" [B, M, H, W, 3],
    "seconds": [B] optimisation wall time, "losses": [B, steps]}."""
    config = experiment.config
    fitter = fitter or SubjectFitter(experiment.template_vertices, experiment.atlas, config, settings)
    background = jnp.asarray(config.loss.background, jnp.float32)
    tc, targets, masks = batch["target_cameras"], batch["targets"], batch["target_masks"]  # [B, M, ...]
    H, W = targets.shape[2:4]
    metrics, renders, seconds, history = [], [], [], []
    for b in range(targets.shape[0]):
        views = [batch["inputs"][b], batch["input_masks"][b], batch["input_cameras"]["K"][b],
                 batch["input_cameras"]["world_to_cam"][b]]
        if on == "all":
            extra = [targets[b], masks[b], tc["K"][b], tc["world_to_cam"][b]]
            views = [np.concatenate([x, y]) for x, y in zip(views, extra)]
        result = fitter.fit(*views)
        g = jax.tree.map(lambda x: x[None], fitter.gaussians(result.uv_map))
        out = render_views(g, jnp.asarray(tc["K"][b:b + 1]), jnp.asarray(tc["world_to_cam"][b:b + 1]), H, W,
                           background, config.render)
        target = composite_on_background(jnp.asarray(targets[b:b + 1]), jnp.asarray(masks[b:b + 1]), background)
        metrics.append(jax.tree.map(np.asarray, fidelity_metrics(out.rgb, target, masks[b:b + 1])))
        renders.append(np.asarray(out.rgb))
        seconds.append(result.seconds)
        history.append(result.losses)
    return {"metrics": jax.tree.map(lambda *x: np.concatenate(x), *metrics), "renders": np.concatenate(renders),
            "seconds": np.asarray(seconds), "losses": np.stack(history)}
