"""Training of the latent expression model (configs/expression.py) on a frozen HeadsUp run.

    headsup train --config configs/expression.py:tiny --config.base=runs/tiny \
        --config.data.source=synth_expr --workdir runs/expr

Data: every subject folder of `data.source` holds frame_00 (neutral, no blendshapes) and expression
frames frame_01, ... with their blendshapes.json (`headsup data synth --frames F`). The frozen base model
encodes each frame from the same N input cameras once, up front (`expression_pairs`); a training pair
is (Z of the neutral frame, the frame's coefficients [E] in template.expression_names order, Z of the
frame, M other views of the frame). The neutral frame pairs with itself at zero coefficients.
Losses: latent MSE to the frame's Z, and L1 of the frozen decoder's head Gaussians rendered in the
frame's target views against its images composited by their masks on `loss.background`.
Checkpoints (Orbax, the project's Checkpointer) hold the expression model and its optimizer; a run
resumes from its newest one; TensorBoard scalars go to workdir/tensorboard.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from headsup_jax.data.capture import find_captures, load_capture
from headsup_jax.errors import ConfigError, InputError
from headsup_jax.geometry import expression_coefficients
from headsup_jax.model.expression import ExpressionModel
from headsup_jax.train import losses
from headsup_jax.train.objective import composite_on_background, render_views
from headsup_jax.train.optim import make_optimizer, step_learning_rate
from headsup_jax.train.workdir import (check_config, check_writable, load_kind_config, restore_newest, resumable_state,
                                      save_config, workdir_path)

log = logging.getLogger(__name__)


class ExpressionDataError(InputError):
    """Expression training data that cannot be used: names the folder and what is wrong."""


@dataclasses.dataclass
class ExpressionPairs:
    """Training pairs, one per (subject, frame), as NumPy arrays."""

    names: list  # "subject/frame"
    z_neutral: np.ndarray  # [P, Lh, Lw, D]
    z_target: np.ndarray  # [P, Lh, Lw, D]
    coefficients: np.ndarray  # [P, E]
    targets: np.ndarray  # [P, M, H, W, 3] composited on the loss background
    K: np.ndarray  # [P, M, 3, 3]
    world_to_cam: np.ndarray  # [P, M, 4, 4]


def new_expression_model(config, base_config, num_coefficients: int) -> ExpressionModel:
    m = config.model
    return ExpressionModel(base_config.model.dim, num_coefficients, m.width, m.depth, m.heads, m.mlp_ratio,
                           rngs=nnx.Rngs(config.seed))


def subject_frames(source) -> dict:
    """subject -> [(frame, folder)] sorted by frame, for the subjects of `source` with two frames or more."""
    if not pathlib.Path(source).is_dir():
        raise ExpressionDataError(f"config.data.source {str(source)!r}: not a folder of captures")
    frames = collections.defaultdict(list)
    for subject, frame, folder in find_captures(source):
        frames[subject].append((frame, folder))
    usable = {s: sorted(f) for s, f in frames.items() if len(f) > 1 and all(name for name, _ in f)}
    if not usable:
        raise ExpressionDataError(f"{source}: no subject with a neutral and an expression frame "
                                  "(<subject>/frame_00, <subject>/frame_01, ...: headsup data synth --frames 2+)")
    return usable


def expression_pairs(trained, source, num_inputs: int, num_targets: int, background) -> ExpressionPairs:
    """The pairs of every subject of `source`, each frame encoded by the frozen base model (`trained`)."""
    from headsup_jax.infer.reconstruct import load_views, pick_views, stack_views

    graphdef, state = nnx.split(trained.model)
    encode = jax.jit(lambda s, images, K, w2c: nnx.merge(graphdef, s).latent(images, K, w2c))
    H, W = trained.image_size
    names, zn, zt, coeffs, targets, Ks, w2cs = [], [], [], [], [], [], []
    subjects = subject_frames(source)
    for subject, frames in tqdm(subjects.items(), desc="encode frames", unit="subject"):
        z_neutral = None
        for frame, folder in frames:
            capture = load_capture(folder, subject, frame)
            if len(capture.cameras) < num_inputs + num_targets:
                raise ExpressionDataError(f"{folder}: {len(capture.cameras)} cameras, fewer than data.num_inputs "
                                          f"{num_inputs} + data.num_targets {num_targets}")
            try:
                b = expression_coefficients(trained.template, capture.blendshapes or {})
            except ValueError as e:
                raise ExpressionDataError(f"{folder / 'blendshapes.json'}: {e}") from None
            if z_neutral is None and np.any(b):
                raise ExpressionDataError(f"{folder / 'blendshapes.json'}: the first frame of {subject!r} must be "
                                          "neutral (no blendshapes), it has " + json.dumps(capture.blendshapes))
            inputs = pick_views(capture, num_views=num_inputs)
            others = [i for i in range(len(capture.cameras)) if i not in inputs][:num_targets]
            images, K, w2c = stack_views(load_views(capture, inputs, H, W))
            z = np.asarray(encode(state, images[None], K[None], w2c[None])[0])  # [Lh, Lw, D]
            views = load_views(capture, others, H, W)
            if any(v.mask is None for v in views):
                raise ExpressionDataError(f"{folder}: no masks/ folder (the render loss composites by the masks)")
            image, K, w2c = stack_views(views)
            masks = np.stack([v.mask for v in views])
            z_neutral = z if z_neutral is None else z_neutral
            names.append(f"{subject}/{frame}")
            zn.append(z_neutral), zt.append(z), coeffs.append(b), Ks.append(K), w2cs.append(w2c)
            targets.append(np.asarray(composite_on_background(image, masks, np.asarray(background, np.float32))))
    return ExpressionPairs(names, *(np.stack(x) for x in (zn, zt, coeffs, targets, Ks, w2cs)))


def expression_loss(model, base, batch: dict, config, render_config):
    """-> (weighted loss, {"latent", "render"}). `base`: the frozen HeadsUp model (its decoder)."""
    z = model(batch["z_neutral"], batch["coefficients"])  # [B, Lh, Lw, D]
    gaussians, _ = base.head_gaussians(base.decoder(z))  # [B, G]
    H, W = batch["targets"].shape[2:4]
    background = jnp.asarray(config.loss.background, jnp.float32)
    renders = render_views(gaussians, batch["K"], batch["world_to_cam"], H, W, background, render_config)
    terms = {"latent": jnp.mean(jnp.square(z - batch["z_target"])),
             "render": losses.l1_loss(renders.rgb, batch["targets"])}
    return config.loss.latent * terms["latent"] + config.loss.render * terms["render"], terms


def train_step(config, render_config, graphdef, base_def):
    """jit((state of (model, optimizer), base state, batch) -> (state, metrics)); the base is never updated."""

    def step(state, base_state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        base = nnx.merge(base_def, base_state)
        grad_fn = nnx.value_and_grad(lambda m: expression_loss(m, base, batch, config, render_config), has_aux=True)
        (loss, terms), grads = grad_fn(model)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   **{f"loss/{k}": v for k, v in terms.items()}}
        return nnx.state((model, optimizer)), metrics

    return jax.jit(step, donate_argnums=0)


def check_expression_config(config) -> None:
    if not config.base:
        raise ConfigError("config.base: the workdir of a trained HeadsUp run is required (--config.base=WORKDIR)")
    if not config.data.source:
        raise ConfigError("config.data.source: a folder of subjects with expression frames is required "
                          "(headsup data synth OUT --frames F; --config.data.source=OUT)")


def _check_base_unchanged(config, workdir) -> None:
    path = workdir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("kind") != "expression":
            raise ConfigError(f"{path}: this workdir holds a HeadsUp run, not an expression model run")
        if saved.get("base") != config.base:
            raise ConfigError(f"{path}: the run was trained on base {saved.get('base')!r}, this config names "
                              f"{config.base!r} (use a new --workdir)")


def train_expression(config, workdir, progress: bool = True, trained=None) -> dict:
    """Trains the expression model of `config` to optim.total_steps (resuming) -> the last metrics.
    `trained`: the base run of config.base when already loaded (`infer.trained.load_trained`)."""
    from headsup_jax.infer.trained import load_trained
    from headsup_jax.train.loop import log_scalars, summary_writer

    workdir = workdir_path(workdir)
    check_expression_config(config)
    _check_base_unchanged(config, workdir)
    check_config(config, workdir)
    check_writable(workdir)
    trained = trained or load_trained(config.base)
    num_inputs = config.data.num_inputs or trained.config.data.num_inputs
    pairs = expression_pairs(trained, config.data.source, num_inputs, config.data.num_targets, config.loss.background)
    log.info("%d pairs of %d subjects", len(pairs.names), len({n.split("/")[0] for n in pairs.names}))
    E = pairs.coefficients.shape[1]
    tx = make_optimizer(config.optim)
    model = new_expression_model(config, trained.config, E)
    graphdef, state, ckpt, start = resumable_state(workdir, config, model, tx)
    save_config(config, workdir)
    base_def, base_state = nnx.split(trained.model)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # committed alike before and after a step:
    state, base_state = jax.device_put((state, base_state), device)  # else the second step compiles again
    step_fn = train_step(config, trained.config.render, graphdef, base_def)
    arrays = {k: getattr(pairs, k) for k in ("z_neutral", "z_target", "coefficients", "targets", "K", "world_to_cam")}
    writer, total, last = summary_writer(workdir), config.optim.total_steps, {}
    bar = tqdm(range(start, total), initial=start, total=total, desc="train expression", disable=not progress)
    for step in bar:
        rng = np.random.default_rng([config.seed, step])  # the batch of a step does not depend on resuming
        pick = rng.choice(len(pairs.names), config.data.batch_size, replace=len(pairs.names) < config.data.batch_size)
        state, metrics = step_fn(state, base_state, {k: v[pick] for k, v in arrays.items()})
        done = step + 1
        if done % config.log.every == 0 or done == total:
            last = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(last["loss"]):
                raise FloatingPointError(f"step {done}: non-finite loss {last}; last checkpoint {ckpt.latest_step}")
            log_scalars(writer, done, dict(last, lr=step_learning_rate(config.optim, done)))
            bar.set_postfix(latent=f"{last['loss/latent']:.4g}", render=f"{last['loss/render']:.4f}")
        ckpt.save(done, state, None, force=done == total)
    ckpt.close()
    if writer:
        writer.close()
    return last


def load_expression(workdir, trained=None):
    """(ExpressionModel at its newest checkpoint, its config, the base TrainedModel) of an expression run;
    `trained`: its base run when already loaded."""
    from headsup_jax.infer.trained import load_trained

    workdir = workdir_path(workdir)
    config = load_kind_config(workdir, "expression", "--expression-workdir", "configs/expression.py")
    trained = trained or load_trained(config.base)
    model = new_expression_model(config, trained.config, len(trained.template.expression_names))
    _, model = restore_newest(workdir, config, model, make_optimizer(config.optim))
    return model, config, trained
