"""Training of the blendshape regressor (configs/regressor.py): a frame's images -> its expression coefficients.

    headsup train --config configs/regressor.py:tiny --config.data.source=synth_expr --workdir runs/regressor

Data: every frame of every subject of `data.source` (`headsup data synth --frames F`; a frame without
blendshapes.json is neutral, zero coefficients) is one example: the images of `data.num_views` views
(those of `infer.reconstruct.pick_views` on the first training capture; on every frame the cameras
nearest these directions) at `data.image_size`, their
cameras, and the frame's coefficients [E] in template.expression_names order. Whole subjects are held
out for the test split (`data.tfds_builder.split_subjects`, seeded). Train views are augmented (random
shifts and channel gains, `data.augment`). Loss: MSE or L1 on the coefficients; Adam with the project's
schedule, Orbax checkpoints (the project's Checkpointer, resumed from the newest), TensorBoard scalars
in workdir/tensorboard, tqdm. At the end, the mean absolute coefficient error on the held-out identities
(overall, mouth/jaw, eyes, and the names the training data drives) against the trivial predictors (the
train split's mean and median coefficients) goes to workdir/heldout_error.json; views.json records the
regressor's view directions, which a driving capture must match (`infer.drive`).
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
from headsup_jax.train.optim import make_optimizer, step_learning_rate
from headsup_jax.train.workdir import (check_config, check_writable, load_kind_config, resolve_template, restore_newest,
                                      resumable_state, save_config, workdir_path)

log = logging.getLogger(__name__)

LOSSES = {"mse": lambda err: jnp.mean(jnp.square(err)), "l1": lambda err: jnp.mean(jnp.abs(err))}
# beside workdir.STATE_KEYS: what the model's shapes and inputs depend on
SAME_RUN_KEYS = ("kind", "data.num_views", "data.image_size", "data.face_crop")
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
    directions: np.ndarray  # [V, 3] the unit directions of the regressor's views seen from the head
    box: tuple | None  # the face crop of its inputs (`regressor_box`), None for whole frames
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


def reference_directions(capture, num_views: int) -> np.ndarray:
    """The regressor's view directions [V, 3]: those of `pick_views` on one capture (its first training one)."""
    from headsup_jax.infer.reconstruct import pick_views

    if len(capture.cameras) < num_views:
        raise RegressorDataError(f"{capture.path}: {len(capture.cameras)} cameras, fewer than the regressor's "
                                 f"{num_views} views (data.num_views)")
    picked = pick_views(capture, num_views=num_views)
    return view_directions(np.stack([capture.cameras[i].world_to_cam for i in picked]))


def nearest_views(capture, directions) -> tuple[list[int], np.ndarray]:
    """For each reference direction [V, 3], in turn, the capture's nearest camera not yet taken ->
    (camera indices [V], their angles to the references in degrees [V]). Farthest-point sampling on each
    capture would not do: on a symmetric rig a calibration jitter decides between the left and right camera."""
    if len(capture.cameras) < len(directions):
        raise RegressorDataError(f"{capture.path}: {len(capture.cameras)} cameras, fewer than the regressor's "
                                 f"{len(directions)} views (data.num_views)")
    dirs = view_directions(np.stack([c.world_to_cam for c in capture.cameras]))  # [C, 3]
    cosines = dirs @ np.asarray(directions, np.float64).T  # [C, V]
    picked = []
    for v in range(len(directions)):
        column = cosines[:, v].copy()
        column[picked] = -np.inf
        picked.append(int(np.argmax(column)))
    angles = np.degrees(np.arccos(np.clip(cosines[picked, np.arange(len(directions))], -1, 1)))
    return picked, angles


def face_box(template, margin: float) -> tuple[np.ndarray, float]:
    """The face crop of the template's canonical frame: (centre [3], height in metres) of the bounding box of
    its "face" region's vertices, the height times `margin`."""
    vertices = template.vertices[np.unique(template.faces[template.regions["face"]])]  # [Vf, 3]
    low, high = vertices.min(0), vertices.max(0)
    return 0.5 * (low + high), float(margin * (high[1] - low[1]))


def crop_face(data: bytes, camera, box, width: int, height: int) -> np.ndarray:
    """The image (encoded bytes) of a capture camera cropped to the face box (`face_box`) and resized to
    width x height: centred on the box centre's projection, as tall as the box at that depth (the rest of
    the system's aligned-capture convention: the head at the template's place). -> [H, W, 3] in [0, 1]"""
    from PIL import Image

    from headsup_jax.data.io import open_image

    centre, size = box
    w2c, K = np.asarray(camera.world_to_cam, np.float64), np.asarray(camera.K, np.float64)
    p = K @ (w2c[:3, :3] @ centre + w2c[:3, 3])
    if p[2] <= 0:
        raise RegressorDataError(f"camera {camera.id}: the face lies behind it (is the capture aligned? "
                                 "headsup data align)")
    u, v = p[:2] / p[2]
    half_h = 0.5 * K[1, 1] * size / p[2]
    half_w = half_h * width / height
    image = open_image(data, "RGB").transform((width, height), Image.Transform.EXTENT,
                                               (u - half_w, v - half_h, u + half_w, v + half_h),
                                               Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32) / 255.0


def frame_views(capture, directions, image_size, box=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [V, H, W, 3], world_to_cam [V, 4, 4] and angles to the references [V] (degrees) of the
    regressor's views of one capture (`nearest_views`): the whole frame, or with `box` the face crop."""
    from headsup_jax.infer.reconstruct import load_views, stack_views

    picked, angles = nearest_views(capture, directions)
    if box is None:
        images, _, world_to_cam = stack_views(load_views(capture, picked, *image_size))
        return images, world_to_cam, angles
    cameras = [capture.cameras[i] for i in picked]
    images = [crop_face(capture.image_files[c.id].read_bytes(), c, box, image_size[1], image_size[0]) for c in cameras]
    return np.stack(images), np.stack([np.asarray(c.world_to_cam, np.float32) for c in cameras]), angles


def load_frames(captures, template, directions, image_size, box=None, desc: str = "load frames",
                progress: bool = True) -> Frames:
    """Frames of (subject, frame, folder) captures, seen from the views nearest `directions` [V, 3]
    (with `box`, their face crops), with their coefficients for `template`."""
    names, images, w2cs, coeffs = [], [], [], []
    for subject, frame, folder in tqdm(captures, desc=desc, unit="frame", disable=not progress):
        capture = load_capture(folder, subject, frame)
        try:
            b = expression_coefficients(template, capture.blendshapes or {})
        except ValueError as e:
            raise RegressorDataError(f"{folder / 'blendshapes.json'}: {e}") from None
        image, w2c, _ = frame_views(capture, directions, image_size, box)
        names.append(f"{subject}/{frame}" if frame else subject)
        images.append(image), w2cs.append(w2c), coeffs.append(b)
    return Frames(names, np.stack(images), np.stack(w2cs), np.stack(coeffs))


def regressor_box(config, template):
    """The face box of a regressor config (data.face_crop > 0: `face_box` with that margin), else None."""
    margin = config.data.get("face_crop", 0.0)
    return face_box(template, margin) if margin > 0 else None


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
    subject, frame, folder = captures["train"][0]
    directions = reference_directions(load_capture(folder, subject, frame), V)  # [V, 3]
    box = regressor_box(config, template)
    train = load_frames(captures["train"], template, directions, size, box, "load train frames", progress)
    test = load_frames(captures["test"], template, directions, size, box, "load test frames", progress)
    if not np.any(train.coefficients):
        raise RegressorDataError(f"{config.data.source}: no frame of the train split has expression "
                                 "coefficients (headsup data synth --frames 2+)")
    log.info("%d train frames, %d held-out frames of %d subjects", len(train.names), len(test.names),
             len({n.split("/")[0] for n in test.names}))
    tx = make_optimizer(config.optim)
    model = new_regressor(config, template.expression_names, start=train.coefficients.mean(0))
    graphdef, state, ckpt, start = resumable_state(workdir, config, model, tx)
    save_config(config, workdir)
    write_json_atomic(workdir / "views.json", {"num_views": V, "directions": directions.tolist()})
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
    config = load_kind_config(workdir, "regressor", "--regressor-workdir", "configs/regressor.py")
    template = load_template(config.template)
    step, model = restore_newest(workdir, config, new_regressor(config, template.expression_names),
                                 make_optimizer(config.optim))
    views = json.loads((workdir / "views.json").read_text())
    return TrainedRegressor(model, config, np.asarray(views["directions"]), regressor_box(config, template), step)
