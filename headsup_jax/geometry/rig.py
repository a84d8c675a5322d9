"""The blendshape rig: identity and expression coefficients to vertices (differentiable)."""
from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.errors import InputError
from headsup_jax.geometry.template import HeadTemplate


def deform(template: HeadTemplate, identity_coeffs=None, expression_coeffs=None) -> jnp.ndarray:
    """vertices + identity_coeffs @ identity_deltas + expression_coeffs @ expression_deltas. [V, 3]

    Coefficients are arrays ([I] and [E], or None for zeros); differentiable in both. Use
    `expression_coefficients` to build and check an expression vector from ARKit names.
    """
    v = jnp.asarray(template.vertices)
    if identity_coeffs is not None:
        if template.identity_deltas is None:
            raise ValueError(f"{template.name}: identity_coeffs given but the template has no identity basis")
        v = v + _combine(template.name, "identity_coeffs", identity_coeffs, template.identity_deltas)
    if expression_coeffs is not None:
        v = v + _combine(template.name, "expression_coeffs", expression_coeffs, template.expression_deltas)
    return v


def _combine(name: str, field: str, coeffs, deltas: np.ndarray) -> jnp.ndarray:
    coeffs = jnp.asarray(coeffs, jnp.float32)
    if coeffs.shape != deltas.shape[:1]:
        raise ValueError(f"{name}: {field}: shape {list(coeffs.shape)}, expected [{deltas.shape[0]}]")
    return jnp.einsum("k,kvc->vc", coeffs, jnp.asarray(deltas))  # [V, 3]


def expression_coefficients(template: HeadTemplate, values, allow_out_of_range: bool = False) -> np.ndarray:
    """An expression vector [E] (float32) from {name: weight} or an array of length E. A name is one of
    the template's or any spelling `template_channels` resolves (ARKit's eyeBlinkLeft for ICT-FaceKit's
    eyeBlink_L; an ARKit name the template splits by side drives both sides).

    Unknown names raise ValueError listing the valid ones; weights outside [0, 1] (or non-finite)
    raise unless `allow_out_of_range`.
    """
    names = template.expression_names
    if isinstance(values, Mapping):
        channels = template_channels(template)
        unknown = sorted(k for k in values if canonical(k) not in channels)
        if unknown:
            raise ValueError(f"{template.name}: unknown expression names {unknown}; valid names: {', '.join(names)}")
        out = np.zeros(len(names), np.float32)
        for k, w in values.items():
            out[channels[canonical(k)]] = w
    else:
        out = np.asarray(values, np.float32)
        if out.shape != (len(names),):
            raise ValueError(f"{template.name}: expression coefficients: shape {list(out.shape)}, "
                             f"expected [{len(names)}] in the order of {', '.join(names)}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{template.name}: expression coefficients: non-finite weights for "
                         f"{[names[i] for i in np.flatnonzero(~np.isfinite(out))]}")
    bad = np.flatnonzero((out < 0) | (out > 1))
    if bad.size and not allow_out_of_range:
        raise ValueError(f"{template.name}: expression weights outside [0, 1]: "
                         f"{ {names[i]: float(out[i]) for i in bad} } (pass allow_out_of_range=True to allow)")
    return out


def canonical(name: str) -> str:
    """'eyeBlinkLeft', 'EyeBlinkLeft', 'eyeBlink_L' -> 'eyeblinkl': lower case, no separators, Left/Right -> l/r."""
    c = name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
    for side in ("left", "right"):
        if c.endswith(side) and len(c) > len(side):
            return c[:-len(side)] + side[0]
    return c


def template_channels(template) -> dict[str, list[int]]:
    """Canonical name -> indices into template.expression_names it drives (an ARKit name the template
    splits into _L and _R drives both)."""
    channels: dict[str, list[int]] = {}
    for i, name in enumerate(template.expression_names):
        key = canonical(name)
        if key in channels:
            raise InputError(f"{template.name}: expression names {template.expression_names[channels[key][0]]!r} "
                             f"and {name!r} are the same name to animation files")
        channels[key] = [i]
    for arkit in map(canonical, ARKIT_BLENDSHAPES):
        if arkit not in channels and arkit + "l" in channels and arkit + "r" in channels:
            channels[arkit] = channels[arkit + "l"] + channels[arkit + "r"]
    return channels
