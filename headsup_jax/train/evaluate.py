"""Evaluation on held-out identities and novel views: metrics JSON and an image grid."""
from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from headsup_jax.geometry import anchor
from headsup_jax.render.sh import rgb_to_sh
from headsup_jax.train.data import eval_batches, model_inputs
from headsup_jax.train.metrics import image_metrics
from headsup_jax.train.objective import composite_on_background, objective, render_views


_COMPILED = {}  # id(experiment) -> jitted evaluation (one compilation per run, not per call)


def replicated(tree, mesh):
    """Host arrays (the same on every process) -> global arrays replicated over `mesh`."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
                        tree)


def _eval_fn(experiment):
    if id(experiment) not in _COMPILED:
        supervision_def, supervision_state = nnx.split(experiment.supervision)

        def run(state, batch, supervision_state):
            model = nnx.merge(experiment.graphdef, state)[0]
            supervision = nnx.merge(supervision_def, supervision_state)
            _, (_, renders, target) = objective(model, supervision, batch, experiment.config)
            metrics = image_metrics(renders.rgb, target, batch["target_masks"], lpips=supervision.lpips)
            return metrics, renders.rgb, target

        # outputs replicated: every process can read them (the state may be sharded over several processes)
        jitted = jax.jit(run, out_shardings=NamedSharding(experiment.mesh, PartitionSpec()))
        _COMPILED[id(experiment)] = (experiment, lambda state, batch: jitted(state, batch, supervision_state))
    return _COMPILED[id(experiment)][1]


def evaluate_batch(experiment, state, batch: dict) -> dict:
    """Renders the target views of one batch -> {"metrics": name -> [B, M] (psnr, ssim; lpips when
    config.loss.lpips_weights names the network), "renders", "targets"}. With several processes every
    process must call it (the same batch on each): the state's shards live on all of them."""
    inputs = replicated(model_inputs(batch), experiment.mesh)
    metrics, renders, targets = _eval_fn(experiment)(state, inputs)
    return {"metrics": jax.tree.map(np.asarray, metrics), "renders": np.asarray(renders), "targets": np.asarray(targets)}


def evaluate_batches(experiment, state, batches) -> dict:
    """`evaluate_batch` over several batches, concatenated along the subjects."""
    results = [evaluate_batch(experiment, state, b) for b in batches]
    return jax.tree.map(lambda *x: np.concatenate(x), *results)


def mean_head_colour(batch: dict) -> np.ndarray:
    """Mean RGB of the head pixels (mask > 0.5) of a batch's target views -> [3]"""
    mask = np.asarray(batch["target_masks"]) > 0.5  # [B, M, H, W]
    return np.asarray(batch["targets"])[mask].mean(0)


def template_baseline(experiment, batch: dict, colour) -> dict:
    """The reference a trained model must beat: the template's Gaussians (zero predictions) painted one
    colour, rendered in the batch's target views -> image metrics name -> [B, M] (as `evaluate_batch`)."""
    config = experiment.config
    sh = jnp.broadcast_to(rgb_to_sh(jnp.asarray(colour, jnp.float32)), (experiment.atlas.count, 1, 3))
    head = anchor(experiment.template_vertices, experiment.atlas, sh=sh)
    inputs = jax.tree.map(jnp.asarray, model_inputs(batch))
    cams, targets = inputs["target_cameras"], inputs["targets"]  # [B, M, H, W, 3]
    B, _, H, W, _ = targets.shape
    gaussians = jax.tree.map(lambda x: jnp.broadcast_to(x, (B, *x.shape)), head)
    background = jnp.asarray(config.loss.background, jnp.float32)
    renders = render_views(gaussians, cams["K"], cams["world_to_cam"], H, W, background, config.render)
    target = composite_on_background(targets, inputs["target_masks"], background)
    return jax.tree.map(np.asarray, image_metrics(renders.rgb, target, inputs["target_masks"]))


def image_grid(renders: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rows: subjects; columns: (render, target) per view. [B, M, H, W, 3] x2 -> [B*H, 2*M*W, 3] uint8"""
    pairs = np.stack([renders, targets], 2)  # [B, M, 2, H, W, 3]
    B, M, _, H, W, _ = pairs.shape
    grid = pairs.transpose(0, 3, 1, 2, 4, 5).reshape(B * H, M * 2 * W, 3)
    return (np.clip(grid, 0, 1) * 255).astype(np.uint8)


def evaluate(config, workdir, split: str = "test", num_subjects: int = 16, num_targets: int = 4) -> dict:
    """Metrics of the newest checkpoint on `split`, in batches of config.data.batch_size -> writes
    eval_<split>.json and eval_<split>.png."""
    from PIL import Image

    from headsup_jax.fileio import write_bytes_atomic
    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import build_experiment

    workdir = epath.Path(workdir)
    experiment = build_experiment(config, workdir)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    step, state = ckpt.restore(experiment.state)
    ckpt.close()
    result = evaluate_batches(experiment, state, eval_batches(config, workdir, split, num_subjects, num_targets))
    summary = {"step": step, "split": split, "subjects": int(result["renders"].shape[0]),
               **{k: float(np.mean(v)) for k, v in result["metrics"].items()},
               "per_subject": {k: np.mean(v, axis=1).tolist() for k, v in result["metrics"].items()}}
    if jax.process_index() == 0:
        write_bytes_atomic(workdir / f"eval_{split}.json", json.dumps(summary, indent=2).encode())
        png = io.BytesIO()
        Image.fromarray(image_grid(result["renders"], result["targets"])).save(png, format="PNG")
        write_bytes_atomic(workdir / f"eval_{split}.png", png.getvalue())
    return summary
