"""File IO of the data package: image encode/decode (pillow) and the atomic writes of headsup_jax.fileio."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from headsup_jax.fileio import write_bytes_atomic, write_json_atomic  # noqa: F401  (re-exported)
from headsup_jax.limits import FileTooLargeError, check_image_pixels


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png_atomic(path, image: np.ndarray) -> None:
    write_bytes_atomic(path, encode_png(image))


def _open_checked(data: bytes, source) -> Image.Image:
    """Pillow's lazy open (the header only), refused over MAX_IMAGE_PIXELS before any pixel is decoded."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # pillow's own cap (2 x its MAX_IMAGE_PIXELS) is above ours
        raise FileTooLargeError(f"{source}: image over pillow's decompression-bomb cap ({e}); not decoded") from e
    try:
        check_image_pixels(im.size, source)
    except FileTooLargeError:
        im.close()
        raise
    return im


def open_image(data: bytes, mode: str = "RGB", source="image") -> Image.Image:
    """PNG/JPEG bytes -> a fully decoded pillow image in `mode`; raises on corrupt or truncated data, and
    `FileTooLargeError` naming `source` (the file) for an image over MAX_IMAGE_PIXELS, before decoding it."""
    with _open_checked(data, source) as im:
        im.load()
        return im.convert(mode)


def decode_image(data: bytes, mode: str = "RGB", source="image") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H, W, 3] (mode "RGB") or [H, W] (mode "L")."""
    return np.asarray(open_image(data, mode, source))


def image_size(data: bytes, source="image") -> tuple[int, int]:
    """(width, height) of encoded image bytes after a full decode (catches truncated files); images over
    MAX_IMAGE_PIXELS are refused, naming `source`, before decoding."""
    with _open_checked(data, source) as im:
        im.load()
        return im.size
