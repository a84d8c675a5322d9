"""Render Gaussians (a file, or a reconstruction) in novel views: a camera rig, a turntable, a capture's
own cameras; and a capture's held-out views beside their ground truth with per-view PSNR.

    images = render_images(load_gaussians("head.ply"), rig_cameras("turntable", 256))
    write_video(images, "head.mp4")
    result = compare(load_trained("runs/tiny"), "captures/alice", num_views=8)   # result.grid, result.psnr
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from PIL import Image, ImageDraw

from headsup_jax.errors import InputError
from headsup_jax.fileio import write_bytes_atomic
from headsup_jax.geometry.rigs import TARGET, image_size, make_rig
from headsup_jax.infer.reconstruct import load_views, reconstruct
from headsup_jax.render import rasterize
from headsup_jax.render.cameras import orbit
from headsup_jax.render.types import Camera, Gaussians

RIGS = ("frontal16", "dome80", "turntable")
TURNTABLE = dict(radius=1.0, fov_y_degrees=26.0, elevation_degrees=10.0)  # frontal16's distance and lens
LABEL_HEIGHT = 24  # pixels of the caption strip under each grid cell (two lines: camera, PSNR)


def rig_cameras(name: str, resolution: int, frames: int = 60) -> list[Camera]:
    """frontal16 / dome80 (geometry.rigs) or a turntable of `frames` views around the head at 10 degrees
    elevation; images `resolution` high, 3:4 (the turntable's sides rounded to even sizes for video)."""
    if name != "turntable":
        return make_rig(name, resolution)
    width, height = (2 * (s // 2) for s in image_size(resolution))
    return orbit(frames, TURNTABLE["radius"], width, height, TURNTABLE["fov_y_degrees"],
                 TURNTABLE["elevation_degrees"], target=np.asarray(TARGET))


def image_renderer(background=(1.0, 1.0, 1.0), backend: str = "auto", **options):
    """A jitted (Gaussians [P], Camera) -> rgb [H, W, 3] (one compile per image size and Gaussian count)."""
    bg = np.asarray(background, np.float32)
    return jax.jit(lambda g, cam: rasterize(g, cam, background=bg, backend=backend, **options).rgb)


def render_images(gaussians: Gaussians, cameras, background=(1.0, 1.0, 1.0), backend: str = "auto",
                  **options) -> list[np.ndarray]:
    """Gaussians [P] seen by each camera -> uint8 [H, W, 3] images (one compile per image size)."""
    render = image_renderer(background, backend, **options)
    g = jax.tree.map(np.asarray, gaussians)
    return [to_uint8(render(g, cam)) for cam in cameras]


def to_uint8(image) -> np.ndarray:
    return np.round(np.clip(np.asarray(image), 0.0, 1.0) * 255).astype(np.uint8)


def write_png(path, image: np.ndarray) -> None:
    from headsup_jax.data.io import encode_png

    write_bytes_atomic(path, encode_png(image))


def write_pngs(images, names, folder) -> list[str]:
    """images[i] -> folder/names[i].png; returns the paths."""
    paths = [f"{folder}/{name}.png" for name in names]
    for path, image in zip(paths, images):
        write_png(path, image)
    return paths


def write_video(images, path, fps: int = 30) -> None:
    """uint8 frames [H, W, 3] (even sides) -> an H.264 mp4 (imageio-ffmpeg's bundled ffmpeg)."""
    import imageio.v2 as imageio

    with imageio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=2, quality=8) as writer:
        for frame in images:
            writer.append_data(frame)


def psnr_uint8(render: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB, peak 1) of two uint8 images, on the pixels as saved."""
    from headsup_jax.train.metrics import psnr

    return float(psnr(render.astype(np.float32) / 255, target.astype(np.float32) / 255))


@dataclasses.dataclass
class Comparison:
    camera_ids: list[str]  # the capture's views not used as inputs
    input_ids: list[str]
    renders: list[np.ndarray]  # uint8 [H, W, 3] per held-out view
    targets: list[np.ndarray]  # uint8 ground truth (composited on the loss background when masked)
    psnr: list[float]  # dB per view, of renders vs targets as saved
    grid: np.ndarray  # uint8: per view a column of ground truth over render over a caption
    latency_s: float


def grid_image(targets, renders, captions) -> np.ndarray:
    """Cells side by side: target over render over a caption strip (cells padded white to the largest)."""
    H = max(t.shape[0] for t in targets)
    W = max(t.shape[1] for t in targets)
    cells = []
    for target, render, caption in zip(targets, renders, captions):
        cell = np.full((2 * H + LABEL_HEIGHT, W, 3), 255, np.uint8)
        h, w = target.shape[:2]
        cell[:h, :w], cell[H:H + h, :w] = target, render
        label = Image.fromarray(cell[2 * H:])
        ImageDraw.Draw(label).multiline_text((2, 1), caption, fill=(0, 0, 0), spacing=1)
        cell[2 * H:] = np.asarray(label)
        cells.append(cell)
    return np.concatenate(cells, 1)


def compare(trained, capture, views=None, num_views: int | None = None,
            resolution: int | None = None) -> Comparison:
    """Reconstruct a capture (folder or `Capture`) from the input views, render every other view of the capture (at `resolution` high,
    default its own size) and compare with its image, as training does: with the background model the
    raw frames; without it, frames composited on config.loss.background where the capture has masks."""
    from headsup_jax.train.objective import composite_on_background

    result = reconstruct(trained, capture, views, num_views)
    held = [i for i, c in enumerate(result.capture.cameras) if c.id not in result.input_ids]
    if not held:
        raise InputError(f"capture {result.capture.subject!r}: every camera is an input view; nothing to compare with")
    config = trained.config
    background = np.asarray(config.loss.background, np.float32)
    with_bg = config.background.enabled
    gaussians = result.gaussians if with_bg else result.head
    options = dict(tile_capacity=config.render.tile_capacity or None, max_pairs=config.render.max_pairs or None)
    views = load_views(result.capture, held, resolution)
    targets = [to_uint8(composite_on_background(v.image, v.mask, background) if v.mask is not None and not with_bg
                        else v.image) for v in views]
    renders = render_images(gaussians, [v.camera for v in views], background, config.render.backend, **options)
    psnr = [psnr_uint8(r, t) for r, t in zip(renders, targets)]
    ids = [result.capture.cameras[i].id for i in held]
    grid = grid_image(targets, renders, [f"{cid}\n{p:.2f} dB" for cid, p in zip(ids, psnr)])
    return Comparison(ids, result.input_ids, renders, targets, psnr, grid, result.latency_s)
