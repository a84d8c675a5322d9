"""Driving an animation from images (`headsup animate --drive CAPTURE_DIR --regressor-workdir DIR`).

    regressor = load_regressor("runs/regressor")                       # train.regressor
    frames = driving_frames("captures/bob_talking")                    # one Capture per frame
    coefficients = drive_coefficients(regressor, frames, template)     # [F, E], as --blendshapes gives them

A driving capture is one subject's frames: a folder of frame folders (<dir>/frame_00, frame_01, ...,
each a capture folder, in name order) or a single capture folder (one frame). Each frame is seen from
the cameras nearest the regressor's view directions (`train.regressor.nearest_views`), which must look
at the head from within VIEW_TOLERANCE_DEGREES of them.
"""
from __future__ import annotations

import pathlib

import numpy as np

from headsup_jax.data.capture import find_captures, load_capture
from headsup_jax.errors import InputError
from headsup_jax.fileio import write_json_atomic

VIEW_TOLERANCE_DEGREES = 20.0  # a driving view farther than this from the regressor's training view is refused


class DriveError(InputError):
    """A driving capture (--drive) or regressor that cannot be used; names the folder, the frame or view."""


def driving_frames(path) -> list:
    """The validated captures of one subject's driving frames, in name order."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise DriveError(f"--drive {path}: not a folder")
    found = find_captures(path)
    if not found:
        raise DriveError(f"--drive {path}: no frames (no cameras.json in it or in its subfolders)")
    several = sorted({subject for subject, frame, _ in found if frame})
    if several:
        raise DriveError(f"--drive {path}: holds the frames of {len(several)} subjects ({', '.join(several[:3])}"
                         f"{', ...' if len(several) > 3 else ''}); give one subject's folder")
    return [load_capture(folder, subject) for subject, _, folder in found]


def check_views(capture, angles) -> None:
    """Refuses a frame whose regressor views look from farther than VIEW_TOLERANCE_DEGREES (angles [V])
    away from the directions the regressor was trained on."""
    worst = int(np.argmax(angles))
    if angles[worst] > VIEW_TOLERANCE_DEGREES:
        raise DriveError(f"--drive {capture.path}: the regressor's view {worst + 1} of {len(angles)} looks at the "
                         f"head from {angles[worst]:.0f} degrees away from the direction it was trained on (at most "
                         f"{VIEW_TOLERANCE_DEGREES:.0f}): another camera rig than the regressor's training data")


def drive_coefficients(regressor, frames, template=None) -> np.ndarray:
    """Coefficients [F, E] of driving frames (`driving_frames`) by a `train.regressor.TrainedRegressor`,
    in the order of `template.expression_names` (refused if the regressor's outputs are other names)."""
    from headsup_jax.train.regressor import frame_views, predict

    names = regressor.model.names
    if template is not None and tuple(template.expression_names) != names:
        raise DriveError(f"--regressor-workdir: the regressor predicts the {len(names)} blendshapes of the template "
                         f"{regressor.config.template!r}, the head's template {template.name!r} has "
                         f"{len(template.expression_names)} others (train it with --config.template=...)")
    config = regressor.config
    images, w2cs = [], []
    for capture in frames:
        image, w2c, angles = frame_views(capture, regressor.directions, tuple(config.data.image_size), regressor.box)
        check_views(capture, angles)
        images.append(image), w2cs.append(w2c)
    return predict(regressor.model, np.stack(images), np.stack(w2cs))


def write_animation(path, coefficients, names) -> None:
    """Coefficients [F, E] as an animation JSON file (a list of {name: weight}, `infer.blendshape_files`)."""
    write_json_atomic(path, [{n: float(w) for n, w in zip(names, row)} for row in np.asarray(coefficients)])
