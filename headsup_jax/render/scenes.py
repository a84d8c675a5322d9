"""Synthetic Gaussian scenes for demos, tests and benchmarks (no files needed)."""
from __future__ import annotations

import numpy as np

from headsup_jax.render.projection import facing_quats
from headsup_jax.render.sh import rgb_to_sh
from headsup_jax.render.types import Gaussians


def random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)


def random_scene(seed: int, n: int, sh_degree: int = 1, extent: float = 0.3, scale_range=(0.003, 0.03),
                 opacity_range=(0.05, 0.99)) -> Gaussians:
    """`n` Gaussians uniformly in a cube of half-side `extent` around the origin."""
    rng = np.random.default_rng(seed)
    return Gaussians(
        means=rng.uniform(-extent, extent, (n, 3)).astype(np.float32),
        quats=random_quats(rng, n),
        scales=np.exp(rng.uniform(*np.log(scale_range), (n, 3))).astype(np.float32),
        opacities=rng.uniform(*opacity_range, n).astype(np.float32),
        sh=(0.3 * rng.normal(size=(n, (sh_degree + 1) ** 2, 3))).astype(np.float32),
    )


def head_scene(seed: int, n: int, sh_degree: int = 1) -> Gaussians:
    """`n` Gaussians spread like a head: flat discs tangent to a head-sized ellipsoid (semi-axes 8 x 11.5 x
    9.5 cm), skin-coloured, footprints sized so that the discs cover the surface."""
    rng = np.random.default_rng(seed)
    semi = np.array([0.08, 0.115, 0.095])
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    means = d * semi
    normal = d / semi**2
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    quats = facing_quats(normal)
    area = 4 * np.pi * (np.prod(semi) ** (2 / 3))  # rough surface area
    footprint = np.sqrt(area / n)
    scales = np.stack([footprint * rng.uniform(0.5, 1.0, n), footprint * rng.uniform(0.5, 1.0, n),
                       np.full(n, 0.1 * footprint)], -1)
    skin = np.array([0.85, 0.64, 0.52]) + 0.08 * rng.normal(size=(n, 1))
    sh = np.zeros((n, (sh_degree + 1) ** 2, 3))
    sh[:, 0] = rgb_to_sh(skin)
    if sh_degree > 0:
        sh[:, 1:] = 0.05 * rng.normal(size=(n, (sh_degree + 1) ** 2 - 1, 3))
    return Gaussians(means=means.astype(np.float32), quats=quats.astype(np.float32),
                     scales=scales.astype(np.float32), opacities=rng.uniform(0.6, 0.99, n).astype(np.float32),
                     sh=sh.astype(np.float32))
