"""Alignment error over random similarities, as a markdown table.

    python benchmarks/align.py [--transforms 10] [--resolution 64] [--rig frontal16] [--seed 0] [--identity]

One synthetic subject (the template's mean head; --identity: its own random identity, whose head size
differs from the template's by a few per cent) is moved by random similarities (a uniform rotation, so
up to 180 degrees about any axis; a translation uniform in a 2 m ball; units millimetres, scale 1000)
and aligned with `headsup data align --method masks`. The error is the residual E = estimate o truth^-1
(template -> template): its rotation angle, the distance it moves the head origin and |scale - 1|.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile

import numpy as np

from headsup_jax.data.align import (Similarity, align_capture, quaternion_matrix, rotation_angle_degrees,
                                   transform_camera)
from headsup_jax.data.align_masks import MaskFitSettings
from headsup_jax.data.synth import Generator, SynthConfig


def random_similarity(rng: np.random.Generator, units: float = 1000.0, max_translation: float = 2.0) -> Similarity:
    """Metres -> `units` per metre: a uniform rotation and a translation uniform in a ball."""
    r = quaternion_matrix(rng.standard_normal(4))  # a normal 4-vector's direction: uniform over SO(3)
    d = rng.standard_normal(3)
    t = max_translation * rng.uniform() ** (1 / 3) * d / np.linalg.norm(d)
    return Similarity(units, r, units * t)


def move_capture(folder: pathlib.Path, sim: Similarity) -> None:
    """Rewrite the capture's cameras as seen from the frame `sim` maps its world to."""
    path = folder / "cameras.json"
    obj = json.loads(path.read_text())
    for c in obj["cameras"]:
        c["world_to_cam"] = transform_camera(c["world_to_cam"], sim).tolist()
    path.write_text(json.dumps(obj))


def errors(estimate: Similarity, truth: Similarity) -> tuple[float, float, float]:
    """(degrees, millimetres at the head, |scale - 1| per cent) of estimate o truth^-1."""
    e = estimate.compose(truth.inverse())
    return rotation_angle_degrees(e.rotation), 1000 * float(np.linalg.norm(e.translation)), 100 * abs(e.scale - 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transforms", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rig", default="frontal16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identity", action="store_true", help="the subject's own identity (default: mean head)")
    args = ap.parse_args(argv)
    gen = Generator(SynthConfig(rig=args.rig, resolution=args.resolution, seed=args.seed))
    if not args.identity:
        gen.identity = lambda index: None  # the template's own shape: the true alignment is exact
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        original = pathlib.Path(tmp) / "original"
        gen.subject(0, original)
        (original / "synth_000000").rename(original.with_name("subject"))
        rows = []
        for k in range(args.transforms):
            folder = pathlib.Path(tmp) / f"moved_{k}"
            shutil.copytree(original.with_name("subject"), folder)
            move = random_similarity(rng)
            move_capture(folder, move)
            estimate, info = align_capture(folder, "masks", settings=MaskFitSettings())
            deg, mm, pct = errors(estimate, move.inverse())
            rows.append((k, rotation_angle_degrees(move.rotation), np.linalg.norm(move.translation) / 1000,
                         deg, mm, pct, info["seconds"]))
    print(f"| # | rotation (deg) | translation (m) | rotation error (deg) | position error (mm) | scale error (%) "
          f"| seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.1f} |")
    a = np.array([r[3:6] for r in rows])
    print(f"| max | | | {a[:, 0].max():.3f} | {a[:, 1].max():.2f} | {a[:, 2].max():.3f} | |")


if __name__ == "__main__":
    main()
