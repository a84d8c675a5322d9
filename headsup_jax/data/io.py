"""File IO shared by the data package: atomic writes and image encode/decode (pillow)."""
from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile

import numpy as np
from PIL import Image


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


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
