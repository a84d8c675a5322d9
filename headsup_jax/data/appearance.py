"""Per-subject appearance in the template's UV space: skin tone and albedo variation, pores and freckles,
brows, lips, eyes, hair or a cap, and a clothing band on the neck.

Features are placed by the 3D position of each texel on the neutral template, relative to the eyes and
mouth (from the template's 68 landmarks, or the procedural head's known feature positions), so any
template with UVs works. Colours are linear albedo in [0, 1].
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage

from headsup_jax.geometry.features import anchor_points, feature_anchors
from headsup_jax.geometry.uv_raster import rasterize_uv

SKIN_LIGHT, SKIN_DARK = np.array([0.80, 0.55, 0.45]), np.array([0.10, 0.05, 0.03])
HAIR = np.array([[0.01, 0.01, 0.01], [0.05, 0.025, 0.012], [0.15, 0.08, 0.03], [0.45, 0.33, 0.15],
                 [0.30, 0.08, 0.02], [0.35, 0.35, 0.35]])  # black, dark/light brown, blond, red, grey
EYES = np.array([[0.08, 0.03, 0.01], [0.18, 0.11, 0.03], [0.08, 0.16, 0.05], [0.08, 0.17, 0.35], [0.2, 0.24, 0.27]])


@dataclasses.dataclass(frozen=True)
class TexelBasis:
    """Where each texel of a T x T texture lies on the neutral template, and the face's reference points."""

    positions: np.ndarray  # [T, nT, 3] metres (0 outside the charts); n canvases side by side (`_layout`)
    valid: np.ndarray  # [T, nT] bool
    corner_uvs: np.ndarray  # [F, 3, 2] each face corner's UV in that texture (u in [0, n))
    eyes: np.ndarray  # [2, 3] centres: the subject's left (+x) eye first
    mouth: np.ndarray  # [3] centre
    mouth_half_width: float
    axis: np.ndarray  # [2] (x, z) of the vertical head axis


def _layout(template, resolution: int):
    """Give every (region, UDIM tile) chart group a place: groups are rasterised one by one and packed
    greedily into T x T canvases where their texels do not overlap (ICT-FaceKit's eyeballs share UVs with
    each other and with the face; adjacent charts share a canvas). Returns face [T, nT], barycentrics
    [T, nT, 3], valid [T, nT] and the per-face-corner UVs into the canvases side by side [F, 3, 2]."""
    T = resolution
    tri_uv = template.uvs[template.face_uvs].astype(np.float64)  # [F, 3, 2]
    tile = np.floor(tri_uv[..., 0].mean(-1))
    region = template.region_of_faces()
    canvases = []  # [face [T, T], barycentrics [T, T, 3], valid [T, T], exact [T, T]]
    canvas_of = np.zeros(len(tri_uv), np.int64)
    for r, k in sorted(set(zip(region.tolist(), tile.tolist()))):
        faces = np.flatnonzero((region == r) & (tile == k))
        local, bary, exact, valid = rasterize_uv(tri_uv[faces] - np.array([k, 0.0]), T)
        limit = 0.005 * exact.sum()  # a few shared texels along common edges are not an overlap
        c = next((c for c, cv in enumerate(canvases) if (cv[3] & exact).sum() <= limit), len(canvases))
        if c == len(canvases):
            canvases.append([np.full((T, T), -1), np.zeros((T, T, 3), np.float32), np.zeros((T, T), bool),
                             np.zeros((T, T), bool)])
        cv = canvases[c]
        write = valid & ~cv[3]  # keep texels already inside another group's triangles
        cv[0][write] = faces[local[write]]
        cv[1][write] = bary[write]
        cv[2] |= valid
        cv[3] |= exact
        canvas_of[faces] = c
    corner_uvs = tri_uv - np.stack([tile - canvas_of, np.zeros_like(tile)], -1)[:, None, :]
    face, bary, valid = (np.concatenate([cv[i] for cv in canvases], axis=1) for i in range(3))
    return face, bary, valid, corner_uvs.astype(np.float32)


def texel_basis(template, resolution: int) -> TexelBasis:
    """Rasterise the template's UV layout (slow part; compute once per template and resolution)."""
    tri, bary, valid, corner_uvs = _layout(template, resolution)
    corners = np.asarray(template.vertices, np.float64)[template.faces[np.maximum(tri, 0)]]  # [T, nT, 3, 3]
    positions = np.where(valid[..., None], np.einsum("ijk,ijkc->ijc", bary, corners), 0.0)
    p = anchor_points(feature_anchors(template), template.vertices)
    eyes, mouth = np.stack([p["eye_left"], p["eye_right"]]), p["mouth"]
    half_width = 0.5 * np.linalg.norm(p["mouth_left"] - p["mouth_right"])
    skull = np.asarray(template.vertices)[np.asarray(template.vertices)[:, 1] > mouth[1]]
    axis = 0.5 * (skull[:, [0, 2]].min(0) + skull[:, [0, 2]].max(0))
    return TexelBasis(positions.astype(np.float32), valid, corner_uvs, eyes, mouth, float(half_width), axis)


def _smooth_noise(p: np.ndarray, rng, wavelength: float, terms: int = 6) -> np.ndarray:
    """Sum of random 3D sinusoids: smooth noise in about [-1, 1]. p: [..., 3] -> [...]"""
    k = rng.normal(size=(terms, 3))
    k *= 2 * np.pi / wavelength / np.linalg.norm(k, axis=-1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, terms)
    return np.sin(p @ k.T + phase).sum(-1) / np.sqrt(terms / 2)


def _segment_distance(p, a, b):
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)


def _mix(base, color, weight):
    return base * (1 - weight[..., None]) + np.asarray(color) * weight[..., None]


def paint(basis: TexelBasis, rng: np.random.Generator) -> np.ndarray:
    """A random subject's albedo texture. [T, nT, 3] float32, linear, in [0, 1]."""
    P = basis.positions.astype(np.float64)
    T, TW = P.shape[:2]  # TW = T x number of UDIM tiles
    eye_mid = basis.eyes.mean(0)
    rel = P - eye_mid  # origin between the eyes
    tone = rng.uniform()
    skin = (SKIN_LIGHT ** (1 - tone) * SKIN_DARK ** tone) * np.exp(rng.normal(0, 0.06, 3))
    tex = skin * (1 + 0.08 * _smooth_noise(P, rng, 0.09))[..., None]
    tex *= (1 + 0.05 * _smooth_noise(P, rng, 0.02))[..., None]
    tex *= (1 + rng.uniform(0.02, 0.06) * rng.standard_normal((T, TW)))[..., None]  # pores
    cheeks = [basis.eyes[k] + np.array([0.3 * s, -0.035, 0.0]) for k, s in ((0, 0.03), (1, -0.03))]
    blush = sum(np.exp(-np.sum((P - c) ** 2, -1) / (2 * 0.018 ** 2)) for c in cheeks)
    tex = _mix(tex, skin * np.array([1.15, 0.7, 0.7]), rng.uniform(0.0, 0.5) * blush)
    face = np.exp(-np.sum(rel ** 2, -1) / (2 * 0.06 ** 2))
    n_freckles = int(rng.uniform() ** 3 * 400)
    if n_freckles:  # dots on face texels, blurred in texture space
        idx = np.flatnonzero(basis.valid.ravel() & (rng.random(T * TW) < face.ravel()))
        dots = np.zeros(T * TW)
        dots[rng.choice(idx, min(n_freckles, len(idx)), replace=False)] = 1.0
        dark = scipy.ndimage.gaussian_filter(dots.reshape(T, TW), sigma=T / 512)
        tex *= (1 - 0.35 * dark / max(dark.max(), 1e-9))[..., None]
    hair = HAIR[rng.integers(len(HAIR))] * np.exp(rng.normal(0, 0.1, 3))
    for k, s in ((0, 1.0), (1, -1.0)):  # brows above each eye, from the nose side outwards
        e = basis.eyes[k]
        d = _segment_distance(P, e + np.array([-0.012 * s, 0.016, 0.006]), e + np.array([0.018 * s, 0.014, -0.004]))
        tex = _mix(tex, hair, np.clip((rng.uniform(0.003, 0.005) - d) / 0.001, 0, 1) * rng.uniform(0.6, 0.95))
    m = (P - basis.mouth) / np.array([basis.mouth_half_width, rng.uniform(0.007, 0.011), 0.02])
    lips = np.clip((1 - np.sum(m ** 2, -1)) / 0.3, 0, 1)
    tex = _mix(tex, skin * np.array([0.8, 0.4, 0.42]) * rng.uniform(0.6, 1.0), lips)
    iris_color = EYES[rng.integers(len(EYES))] * np.exp(rng.normal(0, 0.1, 3))
    for e in basis.eyes:
        d = P - e
        front = d[..., 2] > -0.01
        sclera = ((d[..., 0] / 0.014) ** 2 + (d[..., 1] / 0.006) ** 2 < 1) & front
        r = np.hypot(d[..., 0], d[..., 1])
        tex = np.where(sclera[..., None], np.array([0.7, 0.68, 0.65]), tex)
        tex = np.where((sclera & (r < 0.0055))[..., None], iris_color, tex)
        tex = np.where((sclera & (r < 0.0022))[..., None], np.array([0.01, 0.01, 0.01]), tex)
    phi = np.arctan2(P[..., 0] - basis.axis[0], P[..., 2] - basis.axis[1])
    front, back = rng.uniform(0.045, 0.065), rng.uniform(-0.09, -0.03)
    hairline = front + (back - front) * (np.abs(phi) / np.pi) ** 1.5
    covered = np.clip((rel[..., 1] - hairline) / 0.004, 0, 1)
    if rng.uniform() < 0.25:  # a cap: smooth saturated colour
        tex = _mix(tex, rng.uniform(0.02, 0.6, 3) * (1 + 0.05 * _smooth_noise(P, rng, 0.05))[..., None], covered)
    else:
        streaks = 1 + 0.15 * _smooth_noise(P * np.array([1.0, 0.2, 1.0]), rng, 0.012, terms=3)
        tex = _mix(tex, hair * streaks[..., None], covered)
    if rng.uniform() < 0.7:  # clothing band low on the neck
        band = np.clip((rng.uniform(-0.2, -0.17) - rel[..., 1]) / 0.003, 0, 1)
        tex = _mix(tex, rng.uniform(0.02, 0.7, 3), band)
    tex = np.where(basis.valid[..., None], tex, skin)
    return np.clip(tex, 0, 1).astype(np.float32)
