"""Animation files: per-frame ARKit blendshape weights -> a template's expression coefficients [F, E].

    animation = read_animation("anim.csv", template)   # animation.coefficients [F, E], animation.ignored

Two layouts:
- JSON: a list with one {name: weight} object per frame (missing names weigh 0).
- CSV: a header row of names, one row per frame: the layout face-capture apps export, e.g. Live Link
  Face's `Timecode, BlendShapeCount, EyeBlinkLeft, ..., TongueOut, HeadYaw, ..., RightEyeRoll`.
Names match the template's case-insensitively and across the Left/Right spellings (ARKit's eyeBlinkLeft
is ICT-FaceKit's eyeBlink_L); an ARKit name the template splits by side (browInnerUp, cheekPuff for
ICT-FaceKit's _L and _R) drives both sides. Known non-blendshape columns (timecode, blendshape count, head
and eye rotations) and ARKit shapes the template lacks are ignored and listed; any other name, a weight
outside [0, 1], NaN or a cell that is not a number is an `AnimationFileError` naming the file, the frame
and the name.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib

import numpy as np

from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.errors import InputError
from headsup_jax.geometry.rig import canonical, template_channels
from headsup_jax.limits import check_file_size

# columns of face-capture exports that are not blendshape weights (compared in canonical form)
NON_BLENDSHAPE_COLUMNS = ("timecode", "blendshapecount", "frame", "time", "headyaw", "headpitch", "headroll",
                          "lefteyeyaw", "lefteyepitch", "lefteyeroll", "righteyeyaw", "righteyepitch", "righteyeroll")


class AnimationFileError(InputError):
    """An animation file (--blendshapes) that cannot be used; names the file, the frame and the name."""


@dataclasses.dataclass
class Animation:
    coefficients: np.ndarray  # [F, E] float32, in the order of template.expression_names
    ignored: list[str]  # names in the file that drive nothing (with why), in file order


def _weight(value, path, frame: str, name: str) -> float:
    """A finite weight in [0, 1] from a JSON number or a CSV cell."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise AnimationFileError(f"{path}: {frame}: {name!r}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnimationFileError(f"{path}: {frame}: {name!r}: {value!r} is not a number")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise AnimationFileError(f"{path}: {frame}: {name!r}: weight {value!r} is outside [0, 1]")
    return float(value)


class _Columns:
    """Resolves a file's names against the template once per name: indices driven, or ignored (why)."""

    def __init__(self, template, path):
        self.template, self.path = template, path
        self.channels = template_channels(template)
        self.arkit = {canonical(n) for n in ARKIT_BLENDSHAPES}
        self.ignored: dict[str, str] = {}

    def resolve(self, name: str, where: str) -> list[int] | None:
        """Indices `name` drives, or None for a name to skip (recorded in `ignored`)."""
        key = canonical(name)
        if key in self.channels:
            return self.channels[key]
        if key in NON_BLENDSHAPE_COLUMNS:
            self.ignored.setdefault(name, "not a blendshape")
            return None
        if key in self.arkit:
            self.ignored.setdefault(name, f"the template {self.template.name!r} has no such shape")
            return None
        raise AnimationFileError(f"{self.path}: {where}: unknown blendshape name {name!r}; the template "
                                 f"{self.template.name!r} has {', '.join(self.template.expression_names)} "
                                 f"(ARKit names such as eyeBlinkLeft match its spelling)")


def _frames(rows, columns: _Columns, path) -> np.ndarray:
    """rows: (frame label, [(name, raw value)]) -> coefficients [F, E]."""
    out = []
    for label, items in rows:
        coeffs = np.zeros(len(columns.template.expression_names), np.float32)
        seen: dict[int, str] = {}
        for name, value in items:
            indices = columns.resolve(name, label)
            if indices is None:
                continue
            w = _weight(value, path, label, name)
            for i in indices:
                if i in seen:
                    raise AnimationFileError(f"{path}: {label}: {name!r} and {seen[i]!r} both set "
                                             f"{columns.template.expression_names[i]!r}")
                seen[i] = name
                coeffs[i] = w
        out.append(coeffs)
    if not out:
        raise AnimationFileError(f"{path}: no frames")
    return np.stack(out)  # [F, E]


def _json_rows(text: str, path):
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise AnimationFileError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(obj, list):
        raise AnimationFileError(f"{path}: expected a JSON list of {{name: weight}} objects, one per frame")
    for f, frame in enumerate(obj):
        if not isinstance(frame, dict):
            raise AnimationFileError(f"{path}: frame {f}: expected an object {{name: weight}}, "
                                     f"got {type(frame).__name__}")
        yield f"frame {f}", list(frame.items())


def _csv_rows(text: str, path):
    lines = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in row)]
    if not lines:
        raise AnimationFileError(f"{path}: empty CSV; expected a header row of blendshape names")
    header = [c.strip() for c in lines[0][1]]
    numeric = [c for c in header if _is_number(c)]
    if numeric or "" in header:
        raise AnimationFileError(f"{path}: line {lines[0][0]}: the first row must be a header of blendshape names "
                                 f"(found {(numeric or [''])[0]!r})")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise AnimationFileError(f"{path}: header: column {repeated[0]!r} appears more than once")
    for f, (n, row) in enumerate(lines[1:]):
        if len(row) != len(header):
            raise AnimationFileError(f"{path}: frame {f} (line {n}): {len(row)} cells, the header has {len(header)}")
        yield f"frame {f} (line {n})", list(zip(header, row))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_animation(path, template) -> Animation:
    """An animation file (.json or .csv by its suffix) -> coefficients [F, E] for `template`."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise AnimationFileError(f"{path}: unknown animation file type {suffix!r}; expected .json or .csv")
    try:
        text = check_file_size(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnimationFileError(f"{path}: not a UTF-8 text file ({e})") from None
    columns = _Columns(template, path)
    rows = _json_rows(text, path) if suffix == ".json" else _csv_rows(text, path)
    coefficients = _frames(rows, columns, path)
    return Animation(coefficients, [f"{name} ({why})" for name, why in columns.ignored.items()])
