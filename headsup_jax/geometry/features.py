"""The face's reference points (eyes, mouth) on a template, and the atlas texels around them.

The points are vertex sets (a point is their mean), so they follow any deformation: from the template's
68 landmarks, or the procedural head's known feature positions. The data generator paints eyes and lips
around them; the training objective up-weights the pixels where those texels land (`feature_texels`).
"""
from __future__ import annotations

import numpy as np

FEATURES = ("eyes", "mouth")
EYE_RADIUS = 0.02  # metres around each eye centre: eyeball, lids and lashes
MOUTH_MARGIN = 1.3  # x the mouth's half width around its centre: lips and corners


def feature_anchors(template) -> dict:
    """Face reference points as vertex indices (the point is their mean), so they follow any deformation:
    eye_left (+x), eye_right, mouth, mouth_left, mouth_right. From the 68 landmarks, or the procedural
    head's known feature positions."""
    v = np.asarray(template.vertices, np.float64)
    lm = None if template.landmarks is None else np.asarray(template.landmarks)
    if lm is not None and len(lm) == 68:
        a, b = lm[36:42], lm[42:48]
        left, right = (a, b) if v[a, 0].mean() > v[b, 0].mean() else (b, a)
        corners = (lm[54:55], lm[48:49]) if v[lm[54], 0] > v[lm[48], 0] else (lm[48:49], lm[54:55])
        return {"eye_left": left, "eye_right": right, "mouth": lm[48:68], "mouth_left": corners[0],
                "mouth_right": corners[1]}
    if template.name == "procedural":
        from headsup_jax.geometry.procedural import EYE_PHI, EYE_Y, MOUTH_CORNER, MOUTH_Y

        phi, y = np.arctan2(v[:, 0], v[:, 2]), v[:, 1]
        nearest = lambda p, h: np.array([np.argmin(np.angle(np.exp(1j * (phi - p))) ** 2 + ((y - h) / 0.1) ** 2)])
        return {"eye_left": nearest(EYE_PHI, EYE_Y), "eye_right": nearest(-EYE_PHI, EYE_Y),
                "mouth": nearest(0.0, MOUTH_Y), "mouth_left": nearest(MOUTH_CORNER, MOUTH_Y),
                "mouth_right": nearest(-MOUTH_CORNER, MOUTH_Y)}
    raise ValueError(f"template {template.name!r}: appearance needs 68 landmarks to place the eyes and mouth")


def anchor_points(anchors: dict, vertices) -> dict:
    """name -> 3D point of each anchor on (possibly deformed) vertices [V, 3]."""
    v = np.asarray(vertices, np.float64)
    return {name: v[idx].mean(0) for name, idx in anchors.items()}


def feature_texels(template, atlas) -> np.ndarray:
    """Per-Gaussian membership of the eye and mouth areas (order of FEATURES), from each valid texel's
    point on the neutral template. -> [G, 2] float32 in {0, 1}"""
    p = anchor_points(feature_anchors(template), template.vertices)
    points = atlas.gather(np.asarray(atlas.position_map, np.float64))  # [G, 3]
    eyes = np.minimum(np.linalg.norm(points - p["eye_left"], axis=-1), np.linalg.norm(points - p["eye_right"], axis=-1))
    half_width = 0.5 * np.linalg.norm(p["mouth_left"] - p["mouth_right"])
    mouth = np.linalg.norm(points - p["mouth"], axis=-1)
    return np.stack([eyes < EYE_RADIUS, mouth < MOUTH_MARGIN * half_width], -1).astype(np.float32)
