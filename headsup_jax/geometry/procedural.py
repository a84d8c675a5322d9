"""The built-in procedural head: a closed head-and-neck surface with one UV chart, needing no files.

The surface is a stack of horizontal rings (a smooth union of an ellipsoidal skull and a capped neck
cylinder) displaced outward by smooth bumps for the nose, brow, cheeks, lips, chin and ears. Rings are
spaced evenly in arc length. UVs: u = azimuth (seam down the back of the head and neck, u = 0.5 in
front), v = arc length from the bottom of the neck (0) to the crown (1), so the whole square is one
chart and the face sits upright in its middle. Expression blendshapes (ARKit names) and identity modes
are smooth displacement fields; everything is deterministic.
"""
from __future__ import annotations

import numpy as np

from headsup_jax.geometry.template import HeadTemplate

# Landmark heights (metres) and azimuths (radians, 0 = front, + toward the subject's left, +x).
MOUTH_Y, MOUTH_CORNER = -0.045, 0.28
EYE_Y, EYE_PHI = 0.025, 0.33
BOTTOM_Y, TOP_Y = -0.22, 0.125


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _bump(phi, y, phi0, y0, s_phi, s_y):
    d = np.angle(np.exp(1j * (phi - phi0)))  # wrapped azimuth difference
    return np.exp(-0.5 * (d / s_phi) ** 2 - 0.5 * ((y - y0) / s_y) ** 2)


def _radius(phi, y):
    """Horizontal distance of the surface from the y axis at azimuth `phi` and height `y`."""
    def ellipse(ax, az):
        return 1.0 / np.sqrt((np.sin(phi) / np.maximum(ax, 1e-9)) ** 2 + (np.cos(phi) / np.maximum(az, 1e-9)) ** 2)

    h = np.sqrt(np.clip(1 - (y / TOP_Y) ** 2, 0, 1))  # skull: ellipsoid centred at the origin
    skull = ellipse(0.078 * h, 0.1 * h)
    cap_y = BOTTOM_Y + 0.03  # the neck closes with a round cap below this height
    cap = np.where(y < cap_y, np.sqrt(np.clip(1 - ((y - cap_y) / 0.03) ** 2, 0, 1)), 1.0)
    neck = ellipse(0.052, 0.058) * cap * (1 - _smoothstep(-0.04, 0.06, y))
    r = (skull ** 8 + neck ** 8) ** 0.125
    bumps = (0.022 * _bump(phi, y, 0, -0.005, 0.11, 0.022) + 0.01 * _bump(phi, y, 0, 0.025, 0.07, 0.02)  # nose
             + 0.006 * _bump(phi, y, 0, 0.05, 0.45, 0.01)  # brow ridge
             - 0.008 * (_bump(phi, y, EYE_PHI, EYE_Y, 0.14, 0.012) + _bump(phi, y, -EYE_PHI, EYE_Y, 0.14, 0.012))
             + 0.006 * (_bump(phi, y, 0.55, -0.015, 0.25, 0.03) + _bump(phi, y, -0.55, -0.015, 0.25, 0.03))
             + 0.007 * _bump(phi, y, 0, MOUTH_Y, 0.25, 0.008)  # lips
             + 0.012 * _bump(phi, y, 0, -0.085, 0.22, 0.015)  # chin
             + 0.016 * (_bump(phi, y, 1.62, 0.0, 0.08, 0.022) + _bump(phi, y, -1.62, 0.0, 0.08, 0.022)))  # ears
    taper = _smoothstep(BOTTOM_Y, BOTTOM_Y + 0.04, y) * (1 - _smoothstep(TOP_Y - 0.04, TOP_Y, y))
    return r + bumps * taper


def _rings(num_rings: int) -> np.ndarray:
    """Heights of the rings, evenly spaced in arc length along the mean profile (poles excluded)."""
    y = np.linspace(BOTTOM_Y, TOP_Y, 4001)
    phis = np.linspace(-np.pi, np.pi, 64, endpoint=False)
    r = _radius(phis[None, :], y[:, None]).mean(1)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(y), np.diff(r)))])
    return np.interp(np.linspace(0, s[-1], num_rings + 1)[1:-1], s, y)


def _mesh(num_rings: int, segments: int):
    ys = _rings(num_rings)  # [N-1]
    phis = -np.pi + 2 * np.pi * np.arange(segments) / segments  # [M], seam at the back
    P, Y = np.meshgrid(phis, ys)
    r = _radius(P, Y)
    ring = np.stack([r * np.sin(P), Y, r * np.cos(P)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, BOTTOM_Y, 0]], ring, [[0, TOP_Y, 0]]])
    n, M = len(ys), segments
    v_ring = np.linspace(0, 1, num_rings + 1)[1:-1]
    U, Vv = np.meshgrid(np.arange(M + 1) / M, v_ring)
    uv_ring = np.stack([U, Vv], -1).reshape(-1, 2)
    uv_pole = (np.arange(M) + 0.5) / M
    uvs = np.concatenate([uv_ring, np.stack([uv_pole, np.zeros(M)], -1), np.stack([uv_pole, np.ones(M)], -1)])
    faces, fuvs = [], []
    j = np.arange(M)
    vid = lambda k, jj: 1 + k * M + jj % M  # noqa: E731
    tid = lambda k, jj: k * (M + 1) + jj  # noqa: E731
    bottom, top = 0, len(verts) - 1
    faces.append(np.stack([np.full(M, bottom), vid(0, j + 1), vid(0, j)], -1))
    fuvs.append(np.stack([n * (M + 1) + j, tid(0, j + 1), tid(0, j)], -1))
    for k in range(n - 1):
        a, b, c, d = vid(k, j), vid(k, j + 1), vid(k + 1, j + 1), vid(k + 1, j)
        ta, tb, tc, td = tid(k, j), tid(k, j + 1), tid(k + 1, j + 1), tid(k + 1, j)
        faces += [np.stack([a, b, c], -1), np.stack([a, c, d], -1)]
        fuvs += [np.stack([ta, tb, tc], -1), np.stack([ta, tc, td], -1)]
    faces.append(np.stack([vid(n - 1, j), vid(n - 1, j + 1), np.full(M, top)], -1))
    fuvs.append(np.stack([tid(n - 1, j), tid(n - 1, j + 1), n * (M + 1) + M + j], -1))
    return verts, np.concatenate(faces), uvs, np.concatenate(fuvs)


def _expressions(v: np.ndarray) -> dict:
    """ARKit-named displacement fields on the neutral vertices `v` [V, 3]. name -> [V, 3]"""
    phi, y, x = np.arctan2(v[:, 0], v[:, 2]), v[:, 1], v[:, 0]
    radial = np.stack([np.sin(phi), np.zeros_like(phi), np.cos(phi)], -1)
    front = np.exp(-0.5 * (phi / 0.7) ** 2)
    jaw = front * (1 - _smoothstep(MOUTH_Y - 0.02, MOUTH_Y - 0.004, y)) * _smoothstep(-0.13, -0.1, y)
    g = lambda p0, y0, sp, sy: _bump(phi, y, p0, y0, sp, sy)[:, None]  # noqa: E731
    out = {
        "jawOpen": jaw[:, None] * np.array([0.0, -0.025, -0.008]),
        "jawLeft": jaw[:, None] * np.array([0.008, 0.0, 0.0]),
        "jawRight": jaw[:, None] * np.array([-0.008, 0.0, 0.0]),
        "mouthPucker": g(0, MOUTH_Y, 0.2, 0.01) * (np.array([0.0, 0.0, 0.01]) - 0.3 * x[:, None] * np.eye(3)[0]),
        "cheekPuff": (g(0.5, -0.025, 0.22, 0.02) + g(-0.5, -0.025, 0.22, 0.02)) * 0.01 * radial,
        "browInnerUp": (g(0.12, 0.05, 0.08, 0.01) + g(-0.12, 0.05, 0.08, 0.01)) * np.array([0.0, 0.006, 0.001]),
    }
    for side, s in (("L", 1.0), ("R", -1.0)):
        out[f"mouthSmile_{side}"] = g(s * MOUTH_CORNER, MOUTH_Y, 0.12, 0.012) * np.array([s * 0.005, 0.007, -0.003])
        out[f"eyeBlink_{side}"] = g(s * EYE_PHI, EYE_Y + 0.01, 0.12, 0.006) * np.array([0.0, -0.006, 0.002])
        out[f"eyeWide_{side}"] = g(s * EYE_PHI, EYE_Y + 0.01, 0.12, 0.006) * np.array([0.0, 0.003, 0.0])
        out[f"browDown_{side}"] = g(s * 0.3, 0.05, 0.15, 0.01) * np.array([0.0, -0.005, 0.0])
    return out


def _identity_modes(v: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Smooth shape modes: 3 axis scalings, then random low-frequency displacements away from a point
    inside the head (a smooth direction field, unlike the normals around the nose). [I, V, 3]"""
    rng = np.random.default_rng(seed)
    p = v / 0.1
    outward = v - np.array([0.0, -0.02, 0.0])
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    modes = [0.04 * v * np.eye(3)[k] for k in range(3)]
    for _ in range(count - 3):
        w = rng.normal(size=(4, 3)) * 1.5
        b = rng.uniform(0, 2 * np.pi, size=4)
        f = np.sin(p @ w.T + b).sum(-1)
        f = 0.003 * f / np.sqrt(np.mean(f ** 2))  # 3 mm RMS per unit coefficient
        modes.append(f[:, None] * outward)
    return np.stack(modes[:count])


def procedural_template(num_rings: int = 72, segments: int = 96, num_identity: int = 16,
                        seed: int = 0) -> HeadTemplate:
    """The built-in head (about 6.8k vertices, 13.6k triangles at the defaults)."""
    verts, faces, uvs, fuvs = _mesh(num_rings, segments)
    centre = verts[faces].mean(1)  # [F, 3]
    phi, y = np.arctan2(centre[:, 0], centre[:, 2]), centre[:, 1]
    is_face = (phi / 1.0) ** 2 + ((y + 0.02) / 0.095) ** 2 < 1  # an oval from brow to chin
    regions = {"face": np.flatnonzero(is_face).astype(np.int32),
               "head_neck": np.flatnonzero(~is_face).astype(np.int32)}
    expr = _expressions(verts)
    names = tuple(expr)
    return HeadTemplate(
        vertices=verts.astype(np.float32), faces=faces.astype(np.int32), uvs=uvs.astype(np.float32),
        face_uvs=fuvs.astype(np.int32), regions=regions, expression_names=names,
        expression_deltas=np.stack([expr[k] for k in names]).astype(np.float32),
        identity_deltas=_identity_modes(verts, num_identity, seed).astype(np.float32),
        landmarks=None, name="procedural")
