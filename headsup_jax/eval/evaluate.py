"""Evaluation on held-out identities and novel views (the protocol of the README's "Fidelity" section):
metrics over the whole frame and the head region, JSON and an image grid."""
from __future__ import annotations

import io
import json

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from headsup_jax.eval.metrics import fidelity_metrics
from headsup_jax.train.data import eval_batches, eval_source, model_inputs
from headsup_jax.train.objective import objective


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
            metrics = fidelity_metrics(renders.rgb, target, batch["target_masks"], lpips=supervision.lpips)
            return metrics, renders.rgb, target

        # outputs replicated: every process can read them (the state may be sharded over several processes)
        jitted = jax.jit(run, out_shardings=NamedSharding(experiment.mesh, PartitionSpec()))
        _COMPILED[id(experiment)] = (experiment, lambda state, batch: jitted(state, batch, supervision_state))
    return _COMPILED[id(experiment)][1]


def evaluate_batch(experiment, state, batch: dict) -> dict:
    """Renders the target views of one batch -> {"metrics": name -> [B, M] (psnr, ssim, their _head
    variants; lpips when config.loss.lpips_weights names the network), "renders", "targets"}. With several processes every
    process must call it (the same batch on each): the state's shards live on all of them."""
    inputs = replicated(model_inputs(batch), experiment.mesh)
    metrics, renders, targets = _eval_fn(experiment)(state, inputs)
    return {"metrics": jax.tree.map(np.asarray, metrics), "renders": np.asarray(renders), "targets": np.asarray(targets)}


def evaluate_batches(experiment, state, batches) -> dict:
    """`evaluate_batch` over several batches, concatenated along the subjects."""
    results = [evaluate_batch(experiment, state, b) for b in batches]
    return jax.tree.map(lambda *x: np.concatenate(x), *results)


def image_grid(renders: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rows: subjects; columns: (render, target) per view. [B, M, H, W, 3] x2 -> [B*H, 2*M*W, 3] uint8"""
    pairs = np.stack([renders, targets], 2)  # [B, M, 2, H, W, 3]
    B, M, _, H, W, _ = pairs.shape
    grid = pairs.transpose(0, 3, 1, 2, 4, 5).reshape(B * H, M * 2 * W, 3)
    return (np.clip(grid, 0, 1) * 255).astype(np.uint8)


def _template_reference(experiment, workdir, batches, num_targets: int) -> dict:
    """Mean metrics of the template painted in the mean head colour of the run's training data (the
    target views of 64 subjects), on the same views: the reference point every score is read against."""
    from headsup_jax.eval.references import mean_head_colour, template_baseline

    config = experiment.config
    train, _ = eval_source(config, workdir, "train")
    colour = mean_head_colour(next(eval_batches(config, train, 64, num_targets, batch_size=64)))
    metrics = [template_baseline(experiment, b, colour) for b in batches]
    return {k: float(np.mean(np.concatenate([m[k] for m in metrics]))) for k in metrics[0]}


def evaluate(config, workdir, split: str = "test", num_subjects: int = 16, num_targets: int = 4,
             data=None, views: int | None = None) -> dict:
    """Metrics of the newest checkpoint on `split` of the run's dataset, or on `data` (a built dataset or a
    folder of captures), from `views` input views (default: the config's), in batches of
    config.data.batch_size -> writes eval_<name>.json and eval_<name>.png in the workdir."""
    from PIL import Image

    from headsup_jax.fileio import write_bytes_atomic
    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import build_experiment

    workdir = epath.Path(workdir)
    if views:
        config = config.copy_and_resolve_references()
        config.data.num_inputs = views
    experiment = build_experiment(config, workdir)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    step, state = ckpt.restore(experiment.state)
    ckpt.close()
    source, name = eval_source(config, workdir, split, data)
    name += f"_n{views}" if views else ""
    batches = list(eval_batches(config, source, num_subjects, num_targets))
    result = evaluate_batches(experiment, state, batches)
    summary = {"step": step, "data": str(data or "run dataset"), "split": split, "views": config.data.num_inputs,
               "subjects": int(result["renders"].shape[0]), "targets_per_subject": num_targets,
               **{k: float(np.mean(v)) for k, v in result["metrics"].items()},
               "reference": {"template_mean_colour": _template_reference(experiment, workdir, batches, num_targets)},
               "per_subject": {k: np.mean(v, axis=1).tolist() for k, v in result["metrics"].items()}}
    if jax.process_index() == 0:
        write_bytes_atomic(workdir / f"eval_{name}.json", json.dumps(summary, indent=2).encode())
        png = io.BytesIO()
        Image.fromarray(image_grid(result["renders"], result["targets"])).save(png, format="PNG")
        write_bytes_atomic(workdir / f"eval_{name}.png", png.getvalue())
    return summary
