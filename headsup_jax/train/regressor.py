"""Training of the blendshape regressor (configs/regressor.py): a frame's images -> its expression coefficients.

    headsup train --config configs/regressor.py:tiny --config.data.source=synth_expr --workdir runs/regressor

Data: every frame of every subject of `data.source` (`headsup data synth --frames F`; a frame without
blendshapes.json is neutral, zero coefficients) is one example: the images of `data.num_views` views
(`infer.reconstruct.pick_views`: the same indices for every frame of one rig) at `data.image_size`, their
cameras, and the frame's coefficients [E] in template.expression_names order. Whole subjects are held
out for the test split (`data.tfds_builder.split_subjects`, seeded). Train views are augmented (random
shifts and channel gains, `data.augment`). Loss: MSE or L1 on the coefficients; Adam with the project's
schedule, Orbax checkpoints (the project's Checkpointer, resumed from the newest), TensorBoard scalars
in workdir/tensorboard, tqdm. At the end, the mean absolute coefficient error on the held-out identities
(overall, mouth/jaw, eyes, and the names the training data drives) against the trivial predictors (the
train split's mean and median coefficients) goes to workdir/heldout_error.json; views.json records the
training views' mean directions, which a driving capture must match (`infer.drive`).
"""
from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict
from tqdm import tqdm

from headsup_jax.data.capture import find_captures, load_capture
from headsup_jax.errors import ConfigError, InputError
from headsup_jax.fileio import write_json_atomic
from headsup_jax.geometry import expression_coefficients, load_template
from headsup_jax.model.blendshape_regressor import BlendshapeRegressor
from headsup_jax.train.checkpoint import Checkpointer
from headsup_jax.train.optim import make_optimizer, step_learning_rate
from headsup_jax.train.workdir import check_config, check_writable, resolve_template, save_config, workdir_path

log = logging.getLogger(__name__)

LOSSES = {"mse": lambda err: jnp.mean(jnp.square(err)), "l1": lambda err: jnp.mean(jnp.abs(err))}
SAME_RUN_KEYS = ("kind", "data.num_views", "data.image_size")  # beside workdir.STATE_KEYS: the model's shapes
PREDICTORS = ("regressor", "mean_predictor", "median_predictor")  # compared in heldout_error.json
PREDICT_BATCH = 32  # frames a call of the jitted regressor at evaluation and driving time


class RegressorDataError(InputError):
    """Regressor training or driving data that cannot be used: names the folder and what is wrong."""


@dataclasses.dataclass
class Frames:
    """Examples of the regressor, one per (subject, frame), as NumPy arrays."""

    names: list  # "subject/frame"
    images: np.ndarray  # [P, V, H, W, 3] float32 in [0, 1]
    world_to_cam: np.ndarray  # [P, V, 4, 4]
    coefficients: np.ndarray  # [P, E]


@dataclasses.dataclass
class TrainedRegressor:
    model: BlendshapeRegressor
    config: ConfigDict
    directions: np.ndarray  # [V, 3] the training views' mean unit directions seen from the head
    step: int


def new_regressor(config, names, start=None) -> BlendshapeRegressor:
    """The regressor of `config`; `start` [E]: the coefficients it predicts untrained (BlendshapeRegressor)."""
    m = config.model
    return BlendshapeRegressor(names, config.data.image_size, tuple(m.widths), m.hidden, m.cameras, start,
                               rngs=nnx.Rngs(config.seed))


def view_directions(world_to_cam) -> np.ndarray:
    """Unit directions of the camera centres seen from the head at the origin. [..., 4, 4] -> [..., 3]"""
    from headsup_jax.render.types import camera_centre

    centre = camera_centre(np.asarray(world_to_cam, np.float64))
    return centre / np.maximum(np.linalg.norm(centre, axis=-1, keepdims=True), 1e-12)


def frame_views(capture, num_views: int, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Images [V, H, W, 3] and world_to_cam [V, 4, 4] of the regressor's views of one capture."""
    from headsup_jax.infer.reconstruct import load_views, pick_views, stack_views

    if len(capture.cameras) < num_views:
        raise RegressorDataError(f"{capture.path}: {len(capture.cameras)} cameras, fewer than the regressor's "
                                 f"{num_views} views (data.num_views)")
    images, _, world_to_cam = stack_views(load_views(capture, pick_views(capture, num_views=num_views), *image_size))
    return images, world_to_cam


def load_frames(captures, template, num_views: int, image_size, desc: str = "load frames",
                progress: bool = True) -> Frames:
    """Frames of (subject, frame, folder) captures with their coefficients for `template`."""
    names, images, w2cs, coeffs = [], [], [], []
    for subject, frame, folder in tqdm(captures, desc=desc, unit="frame", disable=not progress):
        capture = load_capture(folder, subject, frame)
        try:
            b = expression_coefficients(template, capture.blendshapes or {})
        except ValueError as e:
            raise RegressorDataError(f"{folder / 'blendshapes.json'}: {e}") from None
        image, w2c = frame_views(capture, num_views, image_size)
        names.append(f"{subject}/{frame}" if frame else subject)
        images.append(image), w2cs.append(w2c), coeffs.append(b)
    return Frames(names, np.stack(images), np.stack(w2cs), np.stack(coeffs))


def split_captures(config) -> dict:
    """{"train", "test"}: the (subject, frame, folder) captures of data.source, whole subjects held out."""
    import pathlib

    from headsup_jax.data.tfds_builder import split_subjects

    source = pathlib.Path(config.data.source)
    if not config.data.source or not source.is_dir():
        raise ConfigError(f"config.data.source {config.data.source!r}: a folder of subjects with expression "
                          "frames is required (headsup data synth --out OUT --frames F; --config.data.source=OUT)")
    synth = source / "synth.json"
    made_on = json.loads(synth.read_text()).get("template") if synth.exists() else None
    if made_on is not None and made_on != config.template:
        raise ConfigError(f"{synth}: generated on the template {made_on!r}, config.template is "
                          f"{config.template!r} (--config.template={made_on})")
    found = find_captures(source)
    try:
        split = split_subjects([s for s, _, _ in found], config.data.split_seed, validation=0.0, test=config.data.test)
    except ValueError as e:
        raise ConfigError(f"config.data.test {config.data.test}: {e}") from None
    if not split["test"]:
        raise ConfigError(f"config.data.test {config.data.test}: holds out none of the {len(split['train'])} "
                          f"subjects of {source}")
    return {name: [c for c in found if c[0] in set(split[name])] for name in ("train", "test")}


def coefficient_groups(names, driven) -> dict:
    """Boolean masks [E] over the coefficients: overall, mouth (names containing jaw or mouth), eyes (eye*)
    and `driven` (the names the training data sets)."""
    lower = [n.lower() for n in names]
    return {"overall": np.ones(len(names), bool), "mouth": np.array(["jaw" in n or "mouth" in n for n in lower]),
            "eyes": np.array([n.startswith("eye") for n in lower]), "driven": np.asarray(driven, bool)}


def coefficient_errors(predicted, target, groups) -> dict:
    """Mean absolute coefficient error [P, E] vs [P, E] over each group's coefficients (None if empty)."""
    err = np.abs(np.asarray(predicted, np.float64) - np.asarray(target, np.float64))
    return {g: float(err[:, mask].mean()) if mask.any() else None for g, mask in groups.items()}


def predict(model, images, world_to_cam) -> np.ndarray:
    """The regressor's coefficients [P, E] of frames [P, V, H, W, 3], [P, V, 4, 4], PREDICT_BATCH a call."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, i, w: nnx.merge(graphdef, s)(i, w))
    out = []
    for start in range(0, len(images), PREDICT_BATCH):
        part = slice(start, start + PREDICT_BATCH)
        n = len(images[part])
        pad = lambda x: np.pad(x, [(0, PREDICT_BATCH - n)] + [(0, 0)] * (x.ndim - 1), mode="edge")  # noqa: E731
        out.append(np.asarray(run(state, pad(images[part]), pad(world_to_cam[part])))[:n])
    return np.concatenate(out)


def heldout_report(model, test: Frames, train_coefficients) -> dict:
    """Held-out coefficient errors of the regressor and of the trivial predictors (the train split's mean
    and median coefficients [E]; the median is what minimises the absolute error), per group and per name."""
    groups = coefficient_groups(model.names, np.any(train_coefficients != 0, axis=0))
    predictions = {"regressor": predict(model, test.images, test.world_to_cam),
                   "mean_predictor": np.broadcast_to(train_coefficients.mean(0), test.coefficients.shape),
                   "median_predictor": np.broadcast_to(np.median(train_coefficients, 0), test.coefficients.shape)}
    report = {"frames": len(test.names), "subjects": len({n.split("/")[0] for n in test.names}),
              **{who: coefficient_errors(p, test.coefficients, groups) for who, p in predictions.items()},
              "groups": {g: [n for n, m in zip(model.names, mask) if m] for g, mask in groups.items()}}
    report["per_name"] = {who: dict(zip(model.names, np.abs(p - test.coefficients).mean(0).round(5).tolist()))
                          for who, p in predictions.items()}
    return report


def augment(images, rng: np.random.Generator, shift: int, gain: float) -> np.ndarray:
    """Each view translated by up to `shift` pixels (edge-padded) and its channels scaled by gains in
    [1 - gain, 1 + gain]. [B, V, H, W, 3] -> [B, V, H, W, 3]"""
    B, V, H, W, _ = images.shape
    padded = np.pad(images, [(0, 0), (0, 0), (shift, shift), (shift, shift), (0, 0)], mode="edge")
    dy, dx = rng.integers(0, 2 * shift + 1, (2, B, V))
    out = np.stack([[padded[b, v, dy[b, v]:dy[b, v] + H, dx[b, v]:dx[b, v] + W] for v in range(V)] for b in range(B)])
    return np.clip(out * rng.uniform(1 - gain, 1 + gain, (B, V, 1, 1, 3)), 0, 1).astype(np.float32)


def train_step(graphdef, loss_kind: str):
    """jit((state of (model, optimizer), batch) -> (state, metrics))."""

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(m):
            return LOSSES[loss_kind](m(batch["images"], batch["world_to_cam"]) - batch["coefficients"])

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=0)


def _check_same_run(config, workdir) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    saved = ConfigDict(json.loads(path.read_text()))
    for key in SAME_RUN_KEYS:
        a, b = _get(saved, key), _get(config, key)
        if json.dumps(a) != json.dumps(b):
            raise ConfigError(f"{path}: the run in this workdir has {key} = {a!r}, this config {b!r} "
                              "(use a new --workdir)")


def _get(config, key: str):
    for k in key.split("."):
        config = config.get(k) if config is not None else None
    return list(config) if isinstance(config, (tuple, list)) else config


def train_regressor(config, workdir, progress: bool = True) -> dict:
    """Trains the regressor of `config` to optim.total_steps (resuming) and evaluates it on the held-out
    identities -> {"final": the last metrics, "heldout": the report written to heldout_error.json}."""
    from headsup_jax.train.loop import log_scalars, summary_writer

    workdir = workdir_path(workdir)
    config = resolve_template(config)
    if config.loss not in LOSSES:
        raise ConfigError(f"config.loss {config.loss!r}: expected one of {', '.join(LOSSES)}")
    _check_same_run(config, workdir)
    check_config(config, workdir)
    check_writable(workdir)
    template = load_template(config.template)
    captures = split_captures(config)
    V, size = config.data.num_views, tuple(config.data.image_size)
    train = load_frames(captures["train"], template, V, size, "load train frames", progress)
    test = load_frames(captures["test"], template, V, size, "load test frames", progress)
    if not np.any(train.coefficients):
        raise RegressorDataError(f"{config.data.source}: no frame of the train split has expression "
                                 "coefficients (headsup data synth --frames 2+)")
    log.info("%d train frames, %d held-out frames of %d subjects", len(train.names), len(test.names),
             len({n.split("/")[0] for n in test.names}))
    tx = make_optimizer(config.optim)
    model = new_regressor(config, template.expression_names, start=train.coefficients.mean(0))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    start = 0
    if ckpt.latest_step is not None:
        start, state = ckpt.restore(state)
        log.info("resumed from step %d", start)
    save_config(config, workdir)
    write_json_atomic(workdir / "views.json", {"num_views": V,
                                               "directions": view_directions(train.world_to_cam).mean(0).tolist()})
    step_fn = train_step(graphdef, config.loss)
    arrays = {"images": train.images, "world_to_cam": train.world_to_cam, "coefficients": train.coefficients}
    writer, total, last = summary_writer(workdir), config.optim.total_steps, {}
    bar = tqdm(range(start, total), initial=start, total=total, desc="train regressor", disable=not progress)
    for step in bar:
        rng = np.random.default_rng([config.seed, step])  # the batch of a step does not depend on resuming
        pick = rng.choice(len(train.names), config.data.batch_size, replace=len(train.names) < config.data.batch_size)
        batch = {k: v[pick] for k, v in arrays.items()}
        batch["images"] = augment(batch["images"], rng, config.data.augment.shift, config.data.augment.gain)
        state, metrics = step_fn(state, batch)
        done = step + 1
        if done % config.log.every == 0 or done == total:
            last = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(last["loss"]):
                raise FloatingPointError(f"step {done}: non-finite loss {last}; last checkpoint {ckpt.latest_step}")
            log_scalars(writer, done, dict(last, lr=step_learning_rate(config.optim, done)))
            bar.set_postfix(loss=f"{last['loss']:.4g}")
        ckpt.save(done, state, None, force=done == total)
    ckpt.close()
    report = heldout_report(nnx.merge(graphdef, state)[0], test, train.coefficients)
    report["step"] = total
    write_json_atomic(workdir / "heldout_error.json", report)
    log_scalars(writer, total, {f"heldout/{who}/{g}": v for who in PREDICTORS for g, v in report[who].items()
                                if v is not None})
    if writer:
        writer.close()
    return {"final": last, "heldout": {k: report[k] for k in ("frames", "subjects") + PREDICTORS}}


def load_regressor(workdir) -> TrainedRegressor:
    """The regressor of a run of configs/regressor.py at its newest checkpoint."""
    workdir = workdir_path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise ConfigError(f"{path}: not found; --regressor-workdir must be a blendshape regressor run's folder")
    config = ConfigDict(json.loads(path.read_text()))
    if config.get("kind") != "regressor":
        raise ConfigError(f"{path}: not a blendshape regressor run (train one with configs/regressor.py)")
    model = new_regressor(config, load_template(config.template).expression_names)
    graphdef, state = nnx.split((model, nnx.Optimizer(model, make_optimizer(config.optim), wrt=nnx.Param)))
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    try:
        if ckpt.latest_step is None:
            raise ConfigError(f"{workdir}: no checkpoint to load (train first)")
        step, state = ckpt.restore(state)
    finally:
        ckpt.close()
    views = json.loads((workdir / "views.json").read_text())
    return TrainedRegressor(nnx.merge(graphdef, state)[0], config, np.asarray(views["directions"]), step)
