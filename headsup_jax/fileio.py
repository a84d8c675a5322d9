"""Atomic file writes for every layer: local paths and bucket URIs (etils.epath) alike.

A write goes to a temporary name in the destination's folder, then replaces the destination, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one; the temporary
file is removed when the write fails.
"""
from __future__ import annotations

import json
import uuid

from etils import epath


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` (str, pathlib or epath; gs:// works) through a temporary file and replace."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())
