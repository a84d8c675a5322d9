"""Per-subject appearance in the template's UV space: skin tone and albedo variation, pores and freckles,
brows, lips, eyes, hair or a cap, and a clothing band on the neck.

Features are placed by the 3D position of each texel on the neutral template, relative to the eyes and
mouth (from the template's 68 landmarks, or the procedural head's known feature positions), so any
template with UVs works. Colours are linear albedo in [0, 1]. Texels are painted as [3, N] float32 rows
(products over the 3 coordinates by `np.einsum`: no BLAS threads, see `raycast`).
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
    """Where the painted texels of a T x nT texture lie on the neutral template, and the face's reference
    points. Only the charts of `faces` are laid out and painted."""

    shape: tuple  # (T, nT): n canvases of T x T side by side (`_layout`)
    texels: np.ndarray  # [N] flat indices into T x nT of the texels covered by `faces`' charts
    points: np.ndarray  # [3, N] float32 metres, each texel's point on the neutral template (x, y, z rows)
    faces: np.ndarray  # [F'] the template faces laid out
    corner_uvs: np.ndarray  # [F', 3, 2] each of those faces' corner UVs in the texture (u in [0, n))
    eyes: np.ndarray  # [2, 3] centres: the subject's left (+x) eye first
    mouth: np.ndarray  # [3] centre
    mouth_half_width: float
    axis: np.ndarray  # [2] (x, z) of the vertical head axis

    @property
    def valid(self) -> np.ndarray:
        """[T, nT] bool: the painted texels."""
        out = np.zeros(self.shape, bool)
        out.flat[self.texels] = True
        return out


def _layout(template, resolution: int, faces: np.ndarray):
    """Give every (region, UDIM tile) chart group of `faces` a place: groups are rasterised one by one and
    packed greedily into T x T canvases where their texels do not overlap (ICT-FaceKit's eyeballs share UVs
    with each other and with the face; adjacent charts share a canvas). Returns face [T, nT] (template face
    index, -1 where empty), barycentrics [T, nT, 3], valid [T, nT] and the corner UVs of `faces` into the
    canvases side by side [F', 3, 2]."""
    T = resolution
    tri_uv = template.uvs[template.face_uvs[faces]].astype(np.float64)  # [F', 3, 2]
    tile = np.floor(tri_uv[..., 0].mean(-1))
    region = template.region_of_faces()[faces]
    canvases = []  # [face [T, T], barycentrics [T, T, 3], valid [T, T], exact [T, T]]
    canvas_of = np.zeros(len(tri_uv), np.int64)
    for r, k in sorted(set(zip(region.tolist(), tile.tolist()))):
        group = np.flatnonzero((region == r) & (tile == k))
        local, bary, exact, valid = rasterize_uv(tri_uv[group] - np.array([k, 0.0]), T)
        limit = 0.005 * exact.sum()  # a few shared texels along common edges are not an overlap
        c = next((c for c, cv in enumerate(canvases) if (cv[3] & exact).sum() <= limit), len(canvases))
        if c == len(canvases):
            canvases.append([np.full((T, T), -1), np.zeros((T, T, 3), np.float32), np.zeros((T, T), bool),
                             np.zeros((T, T), bool)])
        cv = canvases[c]
        write = valid & ~cv[3]  # keep texels already inside another group's triangles
        cv[0][write] = faces[group[local[write]]]
        cv[1][write] = bary[write]
        cv[2] |= valid
        cv[3] |= exact
        canvas_of[group] = c
    corner_uvs = tri_uv - np.stack([tile - canvas_of, np.zeros_like(tile)], -1)[:, None, :]
    face, bary, valid = (np.concatenate([cv[i] for cv in canvases], axis=1) for i in range(3))
    return face, bary, valid, corner_uvs.astype(np.float32)


def texel_basis(template, resolution: int, faces: np.ndarray | None = None) -> TexelBasis:
    """Rasterise the UV layout of the template's `faces` (default: all) at T = `resolution` (the slow
    part; computed once per template, faces and resolution)."""
    faces = np.arange(len(template.faces)) if faces is None else np.asarray(faces)
    tri, bary, valid, corner_uvs = _layout(template, resolution, faces)
    texels = np.flatnonzero(valid)
    corners = np.asarray(template.vertices, np.float64)[template.faces[tri.flat[texels]]]  # [N, 3, 3]
    positions = np.einsum("nk,nkc->nc", bary.reshape(-1, 3)[texels], corners)
    p = anchor_points(feature_anchors(template), template.vertices)
    eyes, mouth = np.stack([p["eye_left"], p["eye_right"]]), p["mouth"]
    half_width = 0.5 * np.linalg.norm(p["mouth_left"] - p["mouth_right"])
    skull = np.asarray(template.vertices)[np.asarray(template.vertices)[:, 1] > mouth[1]]
    axis = 0.5 * (skull[:, [0, 2]].min(0) + skull[:, [0, 2]].max(0))
    return TexelBasis(valid.shape, texels, np.ascontiguousarray(positions.T, np.float32), faces, corner_uvs, eyes,
                      mouth, float(half_width), axis)


def uv_per_metre(template, faces: np.ndarray) -> float:
    """UV units per metre of the neutral surface: the median over the face region's triangles among `faces`
    (all of `faces` if the template has no "face" region) of sqrt(UV area / surface area)."""
    in_face = np.isin(faces, template.regions["face"]) if "face" in template.regions else np.ones(len(faces), bool)
    f = faces[in_face]
    p = np.asarray(template.vertices, np.float64)[template.faces[f]]  # [F, 3, 3]
    uv = np.asarray(template.uvs, np.float64)[template.face_uvs[f]]  # [F, 3, 2]
    area = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=-1)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    uv_area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    ok = area > 0
    return float(np.median(np.sqrt(uv_area[ok] / area[ok])))


def _smooth_noise(p: np.ndarray, rng, wavelength: float, terms: int = 6) -> np.ndarray:
    """Sum of random 3D sinusoids: smooth noise in about [-1, 1]. p: [3, N] float32 -> [N]"""
    k = rng.normal(size=(terms, 3))
    k *= 2 * np.pi / wavelength / np.linalg.norm(k, axis=-1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, (terms, 1))
    waves = np.einsum("mc,cn->mn", k.astype(np.float32), p) + phase.astype(np.float32)  # [terms, N]
    return np.sin(waves).sum(0) / np.float32(np.sqrt(terms / 2))


def _sq_distance(p: np.ndarray, c, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Squared distance of points p [3, N] to the point c [3], per axis divided by scale [3]. -> [N]"""
    return sum(((p[i] - np.float32(c[i])) / np.float32(scale[i])) ** 2 for i in range(3))


def _segment_distance(p: np.ndarray, a, b) -> np.ndarray:
    """Distance of points p [3, N] to the segment ab. -> [N]"""
    ab = (b - a).astype(np.float32)
    t = np.clip((np.einsum("c,cn->n", ab, p) - np.float32(ab @ a)) / np.float32(ab @ ab), 0, 1)
    return np.sqrt(_sq_distance(p - t * ab[:, None], a))


def _mix(tex: np.ndarray, color, weight: np.ndarray) -> None:
    """tex <- tex (1 - weight) + color weight, in place. tex [3, N], color [3] or [3, N], weight [N]"""
    color = np.asarray(color, np.float32)
    tex += (color.reshape(3, -1) - tex) * weight


def _freckles(basis: TexelBasis, rng, texel_rng, face: np.ndarray) -> np.ndarray:
    """Darkening of 0 to 400 freckles: dots on face texels blurred in texture space. -> [N] in [0, 0.35]"""
    n = int(rng.uniform() ** 3 * 400)
    idx = np.flatnonzero(texel_rng.random(len(face), np.float32) < face) if n else []
    if not len(idx):
        return np.zeros(len(face), np.float32)
    dots = np.zeros(basis.shape, np.float32)
    dots.flat[basis.texels[texel_rng.choice(idx, min(n, len(idx)), replace=False)]] = 1.0
    dark = scipy.ndimage.gaussian_filter(dots, sigma=basis.shape[0] / 512).flat[basis.texels]
    return 0.35 * dark / max(dark.max(), 1e-9)


def paint(basis: TexelBasis, rng: np.random.Generator) -> np.ndarray:
    """A random subject's albedo texture. [T, nT, 3] float32, linear, in [0, 1].

    Everything but the per-texel noise (pores, freckle positions) comes from scalar draws of `rng`, so
    a subject's skin, hair, eye and clothing colours and feature shapes do not depend on T; the per-texel
    noise comes from a child generator and has the texel size, the detail the texture can hold."""
    P = basis.points  # [3, N] float32
    texel_rng = rng.spawn(1)[0]
    eye_mid = basis.eyes.mean(0)  # origin of the face and hair shapes
    tone = rng.uniform()
    skin = (SKIN_LIGHT ** (1 - tone) * SKIN_DARK ** tone) * np.exp(rng.normal(0, 0.06, 3))
    shade = 1 + 0.08 * _smooth_noise(P, rng, 0.09)
    shade *= 1 + 0.05 * _smooth_noise(P, rng, 0.02)
    shade *= 1 + np.float32(rng.uniform(0.02, 0.06)) * texel_rng.standard_normal(P.shape[1], np.float32)  # pores
    tex = skin.astype(np.float32)[:, None] * shade  # [3, N]
    cheeks = [basis.eyes[k] + np.array([0.3 * s, -0.035, 0.0]) for k, s in ((0, 0.03), (1, -0.03))]
    blush = sum(np.exp(-_sq_distance(P, c, (0.018 * np.sqrt(2),) * 3)) for c in cheeks)
    _mix(tex, skin * np.array([1.15, 0.7, 0.7]), np.float32(rng.uniform(0.0, 0.5)) * blush)
    tex *= 1 - _freckles(basis, rng, texel_rng, np.exp(-_sq_distance(P, eye_mid, (0.06 * np.sqrt(2),) * 3)))
    hair = HAIR[rng.integers(len(HAIR))] * np.exp(rng.normal(0, 0.1, 3))
    for k, s in ((0, 1.0), (1, -1.0)):  # brows above each eye, from the nose side outwards
        e = basis.eyes[k]
        d = _segment_distance(P, e + np.array([-0.012 * s, 0.016, 0.006]), e + np.array([0.018 * s, 0.014, -0.004]))
        _mix(tex, hair, np.clip((np.float32(rng.uniform(0.003, 0.005)) - d) / np.float32(0.001), 0, 1)
             * np.float32(rng.uniform(0.6, 0.95)))
    lips = _sq_distance(P, basis.mouth, (basis.mouth_half_width, rng.uniform(0.007, 0.011), 0.02))
    _mix(tex, skin * np.array([0.8, 0.4, 0.42]) * rng.uniform(0.6, 1.0), np.clip((1 - lips) / 0.3, 0, 1))
    iris_color = EYES[rng.integers(len(EYES))] * np.exp(rng.normal(0, 0.1, 3))
    for e in basis.eyes:
        dx, dy = P[0] - np.float32(e[0]), P[1] - np.float32(e[1])
        sclera = ((dx / 0.014) ** 2 + (dy / 0.006) ** 2 < 1) & (P[2] > np.float32(e[2] - 0.01))
        r2 = dx ** 2 + dy ** 2
        tex[:, sclera] = np.array([[0.7], [0.68], [0.65]])
        tex[:, sclera & (r2 < 0.0055 ** 2)] = iris_color[:, None]
        tex[:, sclera & (r2 < 0.0022 ** 2)] = 0.01
    phi = np.arctan2(P[0] - np.float32(basis.axis[0]), P[2] - np.float32(basis.axis[1]))
    front, back = rng.uniform(0.045, 0.065), rng.uniform(-0.09, -0.03)
    hairline = front + (back - front) * (np.abs(phi) / np.float32(np.pi)) ** 1.5
    height = P[1] - np.float32(eye_mid[1])  # [N] above the eyes
    covered = np.clip((height - hairline) / 0.004, 0, 1)
    if rng.uniform() < 0.25:  # a cap: smooth saturated colour
        _mix(tex, rng.uniform(0.02, 0.6, 3)[:, None] * (1 + 0.05 * _smooth_noise(P, rng, 0.05)), covered)
    else:
        streaks = 1 + 0.15 * _smooth_noise(P * np.array([[1.0], [0.2], [1.0]], np.float32), rng, 0.012, terms=3)
        _mix(tex, hair[:, None] * streaks, covered)
    if rng.uniform() < 0.7:  # clothing band low on the neck
        _mix(tex, rng.uniform(0.02, 0.7, 3), np.clip((rng.uniform(-0.2, -0.17) - height) / 0.003, 0, 1))
    texture = np.empty((*basis.shape, 3), np.float32)
    texture[:] = skin
    texture.reshape(-1, 3)[basis.texels] = np.clip(tex.T, 0, 1)
    return texture
