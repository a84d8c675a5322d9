"""Importers of outside capture formats into our capture folder (one module a format).

`import_capture("colmap" | "nerf" | "nersemble" | "ava256", SRC, OUT)` reads SRC with the format's `read`
(-> `common.View`s), then `writer.write_capture_folder` converts units, undistorts, writes OUT and
validates it with `headsup_jax.data.capture.check_capture`.
"""
from __future__ import annotations

import importlib
import pathlib

from headsup_jax.errors import InputError

FORMATS = ("colmap", "nerf", "nersemble", "ava256")


def import_capture(fmt: str, src, out, subject: str | None = None, frame: str | None = None,
                   units: str | None = None) -> tuple:
    """Import SRC (format `fmt`) as the capture folder OUT; returns (Capture, units, undistorted camera ids)."""
    from headsup_jax.data.importers.writer import write_capture_folder

    if fmt not in FORMATS:
        raise InputError(f"--from {fmt!r}: expected one of {', '.join(FORMATS)}")
    src = pathlib.Path(src)
    if not src.exists():
        raise InputError(f"SRC {src}: no such file or folder")
    views = importlib.import_module(f"headsup_jax.data.importers.{fmt}").read(src, frame)
    return write_capture_folder(views, out, subject, units)
