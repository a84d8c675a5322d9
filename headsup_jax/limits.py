"""Caps on untrusted input files, in one place, and the checks every loader runs before reading.

A file over `MAX_FILE_BYTES` (by `stat`, nothing read), an `.npz` whose members would decompress past it or
declare more data than they hold, or an image declaring more than `MAX_IMAGE_PIXELS` is refused with an
`InputError` naming the file.
"""
from __future__ import annotations

import math
import os
import pathlib
import zipfile

import numpy as np

from headsup_jax.errors import InputError

MAX_FILE_BYTES = 2 << 30  # 2 GiB: a FLAME or ICT model, a 3DGS PLY of ~8M Gaussians, an OBJ, a JSON
MAX_IMAGE_PIXELS = 8192 * 8192  # 67 MP per image (capture photos are 12-50 MP)


class FileTooLargeError(InputError):
    """A file (or what it declares) over the caps of `headsup_jax.limits`."""


def check_file_size(path) -> pathlib.Path:
    """`path` if its size is within MAX_FILE_BYTES (nothing is read); else FileTooLargeError."""
    path = pathlib.Path(path)
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise FileTooLargeError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES}-byte cap on input files "
                                "(headsup_jax.limits.MAX_FILE_BYTES)")
    return path


def check_image_pixels(size: tuple[int, int], source) -> None:
    """Refuse a (width, height) over MAX_IMAGE_PIXELS, naming `source`; called before decoding."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise FileTooLargeError(f"{source}: image declares {width}x{height} pixels, over the {MAX_IMAGE_PIXELS}-"
                                "pixel cap (headsup_jax.limits.MAX_IMAGE_PIXELS); not decoded")


def _npz_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path) -> None:
    """Refuse a member whose .npy header declares Python objects, or more bytes than the member holds."""
    key = info.filename.removesuffix(".npy")
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        except (ValueError, EOFError) as e:
            raise InputError(f"{path}: member {info.filename!r} is not a .npy array ({e})") from e
        if dtype.hasobject:
            raise InputError(f"{path}: array {key!r} holds Python objects (a pickle); refusing to unpickle it")
        declared = math.prod(shape) * dtype.itemsize
        if declared > info.file_size - f.tell():
            raise FileTooLargeError(f"{path}: array {key!r} declares {list(shape)} {dtype} ({declared} bytes) but "
                                    f"holds {info.file_size - f.tell()} bytes")


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz`, never unpickling (object arrays are refused) and never inflating past
    MAX_FILE_BYTES in all or allocating more than a member holds; errors name the file and the array."""
    path = check_file_size(path)
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path}: not an .npz archive ({e})") from e
    with z:
        inflated = sum(info.file_size for info in z.infolist())
        if inflated > MAX_FILE_BYTES:
            raise FileTooLargeError(f"{path}: its arrays inflate to {inflated} bytes, over the {MAX_FILE_BYTES}-byte "
                                    "cap (headsup_jax.limits.MAX_FILE_BYTES)")
        for info in z.infolist():
            _npz_member(z, info, path)
    with np.load(path, allow_pickle=False) as d:
        return {key: d[key] for key in d.files}
