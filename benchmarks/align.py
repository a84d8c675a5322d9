"""Alignment error over random similarities, as a markdown table.

    python benchmarks/align.py [--transforms 10] [--resolution 64] [--rig frontal16] [--seed 0] [--identity]
        [--template procedural] [--atlas-resolution 32]
    python benchmarks/align.py --workdir outputs/demo [--transforms 3] [--picture docs/align/reconstruction.png]

One synthetic subject (the template's mean head; --identity: its own random identity, whose head size
differs from the template's by a few per cent) is moved by random similarities (a uniform rotation, so
up to 180 degrees about any axis; a translation uniform in a 2 m ball; units millimetres, scale 1000)
and aligned with `headsup data align --method masks`. The error is the residual E = estimate o truth^-1
(template -> template): its rotation angle, the distance it moves the head origin and |scale - 1|.

With --workdir (a trained run): a held-out subject of the run's own synthetic data (an index past its
dataset: an identity it never saw, at its template, rig and resolution) is moved, written as a nerfstudio
transforms.json in millimetres, imported (`headsup data import --from nerf`) and aligned; `evaluate` scores
the run on the original and on each aligned capture (the same input and novel views), and --picture
stacks their render/target grids: the original's first, then each aligned capture's.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import tempfile

import numpy as np
from ml_collections import ConfigDict

from headsup_jax.data.align import (Similarity, align_capture, quaternion_matrix, rotation_angle_degrees,
                                   transform_camera)
from headsup_jax.data.align_masks import MaskFitSettings
from headsup_jax.data.capture import load_capture
from headsup_jax.data.importers import import_capture
from headsup_jax.data.synth import Generator, SynthConfig, subject_name

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera axes (x right, y up, z back) -> OpenCV


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


def write_transforms(folder: pathlib.Path, out: pathlib.Path) -> None:
    """Capture folder -> nerfstudio transforms.json (camera-to-world in OpenGL axes, the capture's units),
    images and masks copied beside it."""
    capture = load_capture(folder)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    frames = []
    for c in capture.cameras:
        K = np.asarray(c.K, np.float64)
        shutil.copy(capture.image_files[c.id], out / "images" / f"{c.id}.png")
        shutil.copy(capture.mask_files[c.id], out / "masks" / f"{c.id}.png")
        frames.append({"file_path": f"images/{c.id}.png", "fg_mask_path": f"masks/{c.id}.png",
                       "transform_matrix": (np.linalg.inv(np.asarray(c.world_to_cam, np.float64)) @ GL_TO_CV).tolist(),
                       "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": c.width, "h": c.height})
    (out / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}))


def error_table(rows) -> str:
    lines = ["| # | rotation (deg) | translation (m) | rotation error (deg) | position error (mm) | scale error (%) "
             "| seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.1f} |" for r in rows]
    a = np.array([r[3:6] for r in rows])
    return "\n".join(lines + [f"| max | | | {a[:, 0].max():.3f} | {a[:, 1].max():.2f} | {a[:, 2].max():.3f} | |"])


def error_rows(args) -> list:
    """Alignment errors of the mean head (or, --identity, its own) moved by args.transforms similarities."""
    gen = Generator(SynthConfig(rig=args.rig, resolution=args.resolution, seed=args.seed, template=args.template))
    if not args.identity:
        gen.identity = lambda index: None  # the template's own shape: the true alignment is exact
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        original = pathlib.Path(tmp) / "original"
        gen.subject(0, original)
        (original / subject_name(0)).rename(original.with_name("subject"))
        for k in range(args.transforms):
            folder = pathlib.Path(tmp) / f"moved_{k}"
            shutil.copytree(original.with_name("subject"), folder)
            move = random_similarity(rng)
            move_capture(folder, move)
            settings = MaskFitSettings(template=args.template, atlas_resolution=args.atlas_resolution)
            estimate, info = align_capture(folder, "masks", settings=settings)
            deg, mm, pct = errors(estimate, move.inverse())
            rows.append((k, rotation_angle_degrees(move.rotation), np.linalg.norm(move.translation) / 1000,
                         deg, mm, pct, info["seconds"]))
    return rows


def camera_errors(aligned: pathlib.Path, original: pathlib.Path) -> tuple[float, float]:
    """The largest rotation (degrees) and camera-centre distance (mm) between the aligned capture's cameras
    and the original's."""
    from headsup_jax.render.types import camera_centre

    pairs = [(np.asarray(a.world_to_cam, np.float64), np.asarray(b.world_to_cam, np.float64))
             for a, b in zip(load_capture(aligned).cameras, load_capture(original).cameras)]
    return (max(rotation_angle_degrees(a[:3, :3] @ b[:3, :3].T) for a, b in pairs),
            max(1000 * float(np.linalg.norm(camera_centre(a) - camera_centre(b))) for a, b in pairs))


def reconstruction_table(args) -> str:
    """Scores of the run in args.workdir on a held-out subject's original capture and on its imported and
    aligned moved copies; the render/target grids stacked into args.picture."""
    from PIL import Image

    from headsup_jax.eval.evaluate import evaluate
    from headsup_jax.train.workdir import resolve_template

    workdir = pathlib.Path(args.workdir)
    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    d = config.data
    index = d.synthetic_subjects + 7  # past the run's dataset: never trained on
    template = resolve_template(config).template
    gen = Generator(SynthConfig(rig=d.rig, resolution=max(d.image_size[0], 64), seed=config.seed, template=template))
    rng = np.random.default_rng(args.seed)
    lines = ["| capture | rotation (deg) | translation (m) | camera error (deg / mm) | PSNR | PSNR head | SSIM "
             "| difference (dB) |", "|---|---|---|---|---|---|---|---|"]
    grids = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        gen.subject(index, tmp / "original")
        base = evaluate(config, workdir, data=tmp / "original", num_subjects=1, num_targets=4)
        grids.append(Image.open(workdir / "eval_original.png").convert("RGB"))
        lines.append(f"| original | | | | {base['psnr']:.2f} | {base['psnr_head']:.2f} | {base['ssim']:.4f} | |")
        for k in range(args.transforms):
            moved = tmp / f"moved_{k}"
            shutil.copytree(tmp / "original" / subject_name(index), moved)
            move = random_similarity(rng)
            move_capture(moved, move)
            write_transforms(moved, tmp / f"nerf_{k}")
            aligned = tmp / f"aligned_{k}"
            import_capture("nerf", tmp / f"nerf_{k}" / "transforms.json", aligned / subject_name(index))
            settings = MaskFitSettings(template=template, atlas_resolution=args.atlas_resolution)
            align_capture(aligned / subject_name(index), "masks", settings=settings)
            deg, mm = camera_errors(aligned / subject_name(index), tmp / "original" / subject_name(index))
            score = evaluate(config, workdir, data=aligned, num_subjects=1, num_targets=4)
            grids.append(Image.open(workdir / f"eval_aligned_{k}.png").convert("RGB"))
            lines.append(f"| aligned {k} | {rotation_angle_degrees(move.rotation):.1f} | "
                         f"{np.linalg.norm(move.translation) / 1000:.2f} | {deg:.2f} / {mm:.1f} | {score['psnr']:.2f} | "
                         f"{score['psnr_head']:.2f} | {score['ssim']:.4f} | {score['psnr'] - base['psnr']:+.2f} |")
    if args.picture:
        picture = pathlib.Path(args.picture)
        picture.parent.mkdir(parents=True, exist_ok=True)
        sheet = Image.new("RGB", (grids[0].width, sum(g.height for g in grids)))
        for k, g in enumerate(grids):
            sheet.paste(g, (0, k * grids[0].height))
        scale = max(1, math.ceil(384 / sheet.width))
        sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST).save(picture)
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transforms", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rig", default="frontal16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="procedural", help="head template of the moved subject (not with --workdir)")
    ap.add_argument("--atlas-resolution", type=int, default=32, help="of the silhouette Gaussians (ICT-FaceKit: 64)")
    ap.add_argument("--identity", action="store_true", help="the subject's own identity (default: mean head)")
    ap.add_argument("--workdir", help="a trained run: score its reconstructions of aligned captures instead")
    ap.add_argument("--picture", help="with --workdir: the stacked render/target grids (PNG)")
    args = ap.parse_args(argv)
    print(reconstruction_table(args) if args.workdir else error_table(error_rows(args)))


if __name__ == "__main__":
    main()
