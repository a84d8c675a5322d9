"""Checksum manifests of finished checkpoints: {relative path: [bytes, sha256]} of every file in a step folder.

Orbax reads a bit-flipped array chunk back without complaint (other values, no error), so each finished
checkpoint gets a manifest, checked before it is restored: a truncated, altered, missing or added file
is named.
"""
from __future__ import annotations

import hashlib

from etils import epath

CHUNK = 1 << 22


def _sha256(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _files(folder: epath.Path) -> dict[str, epath.Path]:
    """{path relative to `folder`: path} of the files under `folder` (a walk: gpath refuses `**` globs)."""
    return {str((epath.Path(top) / name).relative_to(folder)): epath.Path(top) / name
            for top, _, names in folder.walk() for name in names}


def manifest(folder) -> dict[str, list]:
    """{path relative to `folder`: [size in bytes, sha256 hex]} of every file under `folder`."""
    return {name: [p.stat().length, _sha256(p)] for name, p in sorted(_files(epath.Path(folder)).items())}


def first_mismatch(folder, expected: dict[str, list]) -> str | None:
    """The first file of `folder` that differs from the manifest `expected`, with how; None if all match."""
    folder = epath.Path(folder)
    found = _files(folder)
    for name, (size, digest) in sorted(expected.items()):
        if name not in found:
            return f"{folder / name}: missing"
        actual = found[name].stat().length
        if actual != size:
            return f"{folder / name}: {actual} bytes, {size} when written (truncated or overwritten)"
        if _sha256(found[name]) != digest:
            return f"{folder / name}: sha256 differs from when it was written (corrupted)"
    extra = sorted(found.keys() - expected.keys())
    return f"{folder / extra[0]}: not in the checkpoint when it was written" if extra else None
