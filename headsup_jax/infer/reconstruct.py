"""Reconstruct a capture in one forward pass of a trained model: capture folder -> head Gaussians.

    trained = load_trained("runs/tiny")
    result = reconstruct(trained, "captures/alice", views=[0, 3, 7])   # or num_views=8
    save_gaussians(result.head, "alice.ply")

The capture is validated (`load_capture`, its one-line errors), the chosen views are centre-cropped and
resized to the model's image size with K following (`data.views.crop_resize`), and the model runs once,
jitted, on any number N of views (the compressor's queries attend to however many tokens there are).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from flax import nnx

from headsup_jax.data.capture import Capture, load_capture
from headsup_jax.data.io import open_image
from headsup_jax.data.views import crop_resize
from headsup_jax.errors import InputError
from headsup_jax.render.types import Camera, Gaussians, camera_centre


@dataclasses.dataclass
class View:
    """One capture camera's image (and mask) at the size asked for, K adjusted."""

    camera_id: str
    image: np.ndarray  # [H, W, 3] float32 in [0, 1]
    mask: np.ndarray | None  # [H, W] float32 in [0, 1]; None without a masks/ folder
    camera: Camera


@dataclasses.dataclass
class Reconstruction:
    head: Gaussians  # [G] the head Gaussians (NumPy), what files get
    gaussians: Gaussians  # [G (+ G_bg)] with the background model's, what training rendered
    capture: Capture
    input_ids: list[str]  # camera ids of the input views, in input order
    latency_s: float  # one forward pass, compile excluded
    compile_s: float  # the first call: compile and run


def parse_views(text: str) -> list[int]:
    """'0,3,7' -> [0, 3, 7]"""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--views {text!r}: expected comma-separated camera indices, e.g. 0,3,7") from None


def pick_views(capture: Capture, views=None, num_views: int | None = None) -> list[int]:
    """Indices of the input cameras: `views` as given, else `num_views` spread over the rig (farthest-point
    sampling of the camera directions seen from the head at the origin, starting from the camera nearest
    their mean direction, the most frontal one for a frontal rig)."""
    C = len(capture.cameras)
    if views is not None:
        for v in views:
            if not 0 <= v < C:
                raise InputError(f"--views {v}: capture {capture.subject!r} has {C} cameras (indices 0..{C - 1})")
        if len(set(views)) != len(views) or not views:
            raise InputError(f"--views {views}: expected distinct camera indices")
        return list(views)
    if not 1 <= num_views <= C:
        raise InputError(f"--num-views {num_views}: capture {capture.subject!r} has {C} cameras")
    centres = camera_centre(np.stack([c.world_to_cam for c in capture.cameras]).astype(np.float64))  # [C, 3]
    dirs = centres / np.maximum(np.linalg.norm(centres, axis=-1, keepdims=True), 1e-12)
    picked = [int(np.argmax(dirs @ dirs.mean(0)))]
    dist = np.linalg.norm(dirs - dirs[picked[0]], axis=-1)
    dist[picked] = -1.0
    while len(picked) < num_views:
        picked.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(dirs - dirs[picked[-1]], axis=-1))
        dist[picked] = -1.0  # never twice, even for cameras at the same direction
    return picked


def load_views(capture: Capture, indices, height: int | None = None, width: int | None = None) -> list[View]:
    """The cameras `indices` of a validated capture at height x width (default: each camera's own size;
    with only `height`, the width keeps the camera's aspect)."""
    out = []
    for i in indices:
        spec = capture.cameras[i]
        H = height or spec.height
        W = width or (int(round(H * spec.width / spec.height)) if height else spec.width)
        image, K = crop_resize(open_image(capture.image_files[spec.id].read_bytes(), "RGB"), spec.K, W, H)
        mask = None
        if capture.mask_files is not None:
            mask = crop_resize(open_image(capture.mask_files[spec.id].read_bytes(), "L"), spec.K, W, H)[0]
            mask = mask.astype(np.float32) / 255.0
        camera = Camera(world_to_cam=np.asarray(spec.world_to_cam, np.float32), K=K, width=W, height=H)
        out.append(View(spec.id, image.astype(np.float32) / 255.0, mask, camera))
    return out


def stack_views(views: list[View]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [N, H, W, 3], K [N, 3, 3] and world_to_cam [N, 4, 4] of loaded views."""
    return (np.stack([v.image for v in views]), np.stack([np.asarray(v.camera.K) for v in views]),
            np.stack([np.asarray(v.camera.world_to_cam) for v in views]))


def forward(model, with_aux: bool = False):
    """The model's forward pass, jitted: ([B,N,H,W,3], [B,N,3,3], [B,N,4,4]) -> Gaussians [B, G (+ G_bg)]
    (and, `with_aux`, the model's aux dict: its raw "uv_map" [B, R, R, A], ...)."""
    graphdef, state = nnx.split(model)
    pick = (lambda out: out) if with_aux else (lambda out: out[0])
    run = jax.jit(lambda s, images, K, w2c: pick(nnx.merge(graphdef, s)(images, K, w2c)))
    return lambda images, K, w2c: run(state, images, K, w2c)


def reconstruct(trained, capture, views=None, num_views: int | None = None) -> Reconstruction:
    """A capture (folder, or a loaded `Capture`) -> its Gaussians from the views chosen (`pick_views`;
    default: the config's N)."""
    capture = capture if isinstance(capture, Capture) else load_capture(capture)
    num_views = num_views or min(trained.config.data.num_inputs, len(capture.cameras))
    indices = pick_views(capture, views, num_views)
    H, W = trained.image_size
    inputs = load_views(capture, indices, H, W)
    images, K, w2c = (x[None] for x in stack_views(inputs))  # [1, N, ...]
    run = trained.forward()
    start = time.perf_counter()
    jax.block_until_ready(run(images, K, w2c))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    gaussians = jax.block_until_ready(run(images, K, w2c))
    latency_s = time.perf_counter() - start
    gaussians = jax.tree.map(lambda x: np.asarray(x[0], np.float32), gaussians)
    G = trained.model.num_gaussians
    head = jax.tree.map(lambda x: x[:G], gaussians)
    return Reconstruction(head, gaussians, capture, [v.camera_id for v in inputs], latency_s, compile_s)
