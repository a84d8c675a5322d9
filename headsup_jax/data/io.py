"""File IO of the data package: image encode/decode (pillow) and the atomic writes of headsup_jax.fileio."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from headsup_jax.fileio import write_bytes_atomic, write_json_atomic  # noqa: F401  (re-exported)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png_atomic(path, image: np.ndarray) -> None:
    write_bytes_atomic(path, encode_png(image))


def open_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """PNG/JPEG bytes -> a fully decoded pillow image in `mode`; raises on corrupt or truncated data."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert(mode)


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H, W, 3] (mode "RGB") or [H, W] (mode "L")."""
    return np.asarray(open_image(data, mode))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes after a full decode (catches truncated files)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size
