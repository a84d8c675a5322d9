"""One example -> training views: pick input and supervision cameras, decode, crop/resize with K adjusted.

Works on the records of `tfds_builder` (encoded images, per-camera K and world_to_cam). Any problem
raises `CaptureError` naming the subject, the file (images/<camera>) and the field.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from headsup_jax.data.capture import CaptureError, Problem, camera_problems
from headsup_jax.data.io import open_image


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    num_inputs: int = 4  # N input views
    num_targets: int = 4  # M supervision views
    width: int = 96  # output image size
    height: int = 128
    disjoint: bool = True  # supervision views are never input views


def crop_resize(image: Image.Image, K: np.ndarray, width: int, height: int,
                resample=Image.Resampling.BILINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop to the output aspect, resize to width x height; K follows. -> (array, K [3, 3])."""
    w, h = image.size
    scale = min(w / width, h / height)  # source pixels per output pixel
    cw, ch = width * scale, height * scale
    x0, y0 = 0.5 * (w - cw), 0.5 * (h - ch)
    out = image.resize((width, height), resample, box=(x0, y0, x0 + cw, y0 + ch))
    K = np.asarray(K, np.float64).copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    K[:2] /= scale  # continuous pixel coordinates (centres at +0.5) scale exactly
    return np.asarray(out), K.astype(np.float32)


def select_views(num_cameras: int, spec: ViewSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the input [N] and supervision [M] cameras. Disjoint views are one permutation's first
    N and last M, so for a record and seed the supervision views do not depend on N and the inputs of a
    smaller N are a subset of a larger N's (the fidelity protocol's view sweep)."""
    n, m = spec.num_inputs, spec.num_targets
    if spec.disjoint:
        if n + m > num_cameras:
            raise ValueError(f"{num_cameras} cameras cannot give {n} input + {m} disjoint supervision views")
        order = rng.permutation(num_cameras)  # supervision views from the end: the same ones for any n
        return order[:n], order[num_cameras - m:]
    if max(n, m) > num_cameras:
        raise ValueError(f"{num_cameras} cameras cannot give {max(n, m)} distinct views")
    return rng.choice(num_cameras, n, replace=False), rng.choice(num_cameras, m, replace=False)


def _decode(data: bytes, mode: str, subject: str, file: str) -> Image.Image:
    try:
        return open_image(data, mode)
    except Exception as e:  # noqa: BLE001 (pillow raises many types for corrupt data)
        raise CaptureError(Problem(subject, file, "data", f"cannot decode ({e})")) from e


def _view(record: dict, k: int, spec: ViewSpec, subject: str, with_mask: bool):
    cid = record["camera_ids"][k].decode()
    problems = camera_problems(record["K"][k], record["world_to_cam"][k], subject, "cameras", f"cameras[{cid}]")
    if problems:
        raise CaptureError(problems[0])
    image = _decode(record["images"][k], "RGB", subject, f"images/{cid}")
    want = (int(record["width"][k]), int(record["height"][k]))
    if image.size != want:
        raise CaptureError(Problem(subject, f"images/{cid}", "size", f"image is {image.size}, camera says {want}"))
    rgb, K = crop_resize(image, record["K"][k], spec.width, spec.height)
    mask = None
    if with_mask:
        mask_image = _decode(record["masks"][k], "L", subject, f"masks/{cid}")
        if mask_image.size != want:
            raise CaptureError(Problem(subject, f"masks/{cid}", "size", f"mask is {mask_image.size}, camera says {want}"))
        mask = crop_resize(mask_image, record["K"][k], spec.width, spec.height)[0].astype(np.float32) / 255.0
    return rgb.astype(np.float32) / 255.0, K, np.asarray(record["world_to_cam"][k], np.float32), mask


def make_views(record: dict, spec: ViewSpec, rng: np.random.Generator) -> dict:
    """A record -> {inputs [N,H,W,3], input_cameras {K [N,3,3], world_to_cam [N,4,4]}, targets [M,H,W,3],
    target_cameras, target_masks [M,H,W], input_masks [N,H,W] (ones without masks), has_masks, subject},
    images float32 in [0, 1]."""
    subject = record["subject"].decode() if isinstance(record["subject"], bytes) else str(record["subject"])
    try:
        inputs, targets = select_views(len(record["camera_ids"]), spec, rng)
    except ValueError as e:
        raise CaptureError(Problem(subject, "cameras", "count", str(e))) from e
    has_masks = all(len(m) > 0 for m in record["masks"])
    ins = [_view(record, k, spec, subject, has_masks) for k in inputs]
    outs = [_view(record, k, spec, subject, has_masks) for k in targets]
    ones = np.ones((spec.height, spec.width), np.float32)
    return {
        "inputs": np.stack([v[0] for v in ins]),  # [N, H, W, 3]
        "input_cameras": {"K": np.stack([v[1] for v in ins]), "world_to_cam": np.stack([v[2] for v in ins])},
        "targets": np.stack([v[0] for v in outs]),  # [M, H, W, 3]
        "target_cameras": {"K": np.stack([v[1] for v in outs]), "world_to_cam": np.stack([v[2] for v in outs])},
        "target_masks": np.stack([v[3] if has_masks else ones for v in outs]),  # [M, H, W]
        "input_masks": np.stack([v[3] if has_masks else ones for v in ins]),  # [N, H, W]
        "has_masks": np.bool_(has_masks),
        "subject": np.bytes_(subject.encode()),
    }
