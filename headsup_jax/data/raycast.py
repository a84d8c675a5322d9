"""Ground-truth mesh renderer for synthetic data: Embree ray casting (embreex), independent of our
Gaussian rasteriser. Textured Lambertian surface under a few directional studio lights plus ambient,
`supersample`^2 rays per pixel (anti-aliased RGB and fractional mask), depth of the centre-most sample.
Products over a 3- or 4-long axis use `np.einsum`, not `@`: OpenBLAS threads tall-skinny matmuls, and on
a loaded machine its spinning threads made a 256 px subject 3x slower.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from embreex import rtcore_scene as rtcs
from embreex.mesh_construction import TriangleMesh

from headsup_jax.geometry.template import vertex_normals
from headsup_jax.render.types import camera_centre


@dataclasses.dataclass(frozen=True)
class Lighting:
    directions: np.ndarray  # [L, 3] unit vectors towards the lights (world)
    colors: np.ndarray  # [L, 3] linear intensities
    ambient: np.ndarray  # [3]


@dataclasses.dataclass(frozen=True)
class Surface:
    """A deformed mesh with its UV texture."""

    vertices: np.ndarray  # [V, 3] metres
    faces: np.ndarray  # [F, 3]
    corner_uvs: np.ndarray  # [F, 3, 2] texture coordinates of each face corner
    texture: np.ndarray  # [T, nT, 3] float32 linear albedo, texel (i, j) centre at u=(j+.5)/T, v=1-(i+.5)/T
    #                      (n UDIM tiles side by side: u in [0, n))


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup, clamped at the border. uv: [P, 2] -> [P, 3] (float32 for float32 inputs)."""
    T, TW = texture.shape[:2]
    x = np.clip(uv[:, 0] * np.float32(T) - np.float32(0.5), 0, TW - 1)
    y = np.clip((1 - uv[:, 1]) * np.float32(T) - np.float32(0.5), 0, T - 1)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    i00 = y0.astype(np.int64) * TW + x0.astype(np.int64)  # flat index of the top-left texel
    dx, dy = (x0 < TW - 1).astype(np.int64), np.where(y0 < T - 1, TW, 0)  # steps right and down, 0 at the border
    flat = texture.reshape(-1, 3)
    top = np.take(flat, i00, axis=0) * (1 - fx) + np.take(flat, i00 + dx, axis=0) * fx
    bottom = np.take(flat, i00 + dy, axis=0) * (1 - fx) + np.take(flat, i00 + dy + dx, axis=0) * fx
    return top * (1 - fy) + bottom * fy


def _rays(camera, supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origins [P, 3], unit directions [P, 3] (world, float32) and camera z per unit length [P] of all samples."""
    W, H, s = camera.width, camera.height, supersample
    u = ((np.arange(W * s) + 0.5) / s).astype(np.float32)  # sample positions in pixel units
    v = ((np.arange(H * s) + 0.5) / s).astype(np.float32)
    Kinv = np.linalg.inv(np.asarray(camera.K, np.float64)).astype(np.float32)
    d_cam = np.empty((H * s, W * s, 3), np.float32)
    d_cam[..., 0] = Kinv[0, 0] * u[None, :] + Kinv[0, 1] * v[:, None] + Kinv[0, 2]
    d_cam[..., 1] = Kinv[1, 1] * v[:, None] + Kinv[1, 2]
    d_cam[..., 2] = 1.0
    d_cam = d_cam.reshape(-1, 3)
    d_cam /= np.linalg.norm(d_cam, axis=-1, keepdims=True)
    w2c = np.asarray(camera.world_to_cam, np.float64)
    origin = camera_centre(w2c).astype(np.float32)
    dirs = np.einsum("pc,cd->pd", d_cam, w2c[:3, :3].astype(np.float32))
    return np.broadcast_to(origin, d_cam.shape), dirs, d_cam[:, 2]


def _box(samples: np.ndarray) -> np.ndarray:
    """Mean over the supersamples of each pixel: [H, s, W, s, ...] -> [H, W, ...] (strided adds, no reduce)."""
    s = samples.shape[1]
    return sum(samples[:, i, :, j] for i in range(s) for j in range(s)) / (s * s)


def mesh_coverage(vertices: np.ndarray, faces: np.ndarray, cameras, supersample: int = 2) -> np.ndarray:
    """Fraction of each pixel's `supersample`^2 rays that hit the mesh, in each camera (what `render` writes
    as the mask). vertices [V, 3], faces [F, 3] -> [C, H, W] float32"""
    scene = rtcs.EmbreeScene()
    TriangleMesh(scene, np.asarray(vertices, np.float32), np.asarray(faces))
    out = []
    for cam in cameras:
        origins, dirs, _ = _rays(cam, supersample)
        hit = scene.run(np.ascontiguousarray(origins), dirs, output=1)
        out.append(_box((hit["primID"] >= 0).reshape(cam.height, supersample, cam.width, supersample).astype(np.float32)))
    return np.stack(out)


class MeshRenderer:
    """Renders one `Surface` from many cameras (the Embree scene is built once)."""

    def __init__(self, surface: Surface):
        self.surface = surface
        self.scene = rtcs.EmbreeScene()
        TriangleMesh(self.scene, surface.vertices.astype(np.float32), surface.faces)  # indexed: 40% faster to build
        normals = vertex_normals(surface.vertices.astype(np.float64), surface.faces)[surface.faces]  # [F, 3, 3]
        self.corner_attributes = np.concatenate([normals, surface.corner_uvs], -1).astype(np.float32)  # [F, 3, 5]

    def render(self, camera, lighting: Lighting, background: np.ndarray, supersample: int = 2):
        """-> rgb [H, W, 3] float32 in [0, 1] (sRGB), mask [H, W] float32 coverage, depth [H, W] metres (0: none)."""
        W, H, s = camera.width, camera.height, supersample
        origins, dirs, z_per_t = _rays(camera, s)
        hit = self.scene.run(np.ascontiguousarray(origins), dirs, output=1)
        ok = hit["primID"] >= 0
        f = hit["primID"][ok]
        b = np.stack([1 - hit["u"][ok] - hit["v"][ok], hit["u"][ok], hit["v"][ok]], -1)  # [P, 3]
        attributes = np.einsum("pk,pkc->pc", b, np.take(self.corner_attributes, f, axis=0))  # [P, 5]
        normal = attributes[:, :3]
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
        normal *= np.where(np.einsum("pc,pc->p", normal, dirs[ok]) > 0, -1.0, 1.0).astype(np.float32)[:, None]
        albedo = sample_texture(self.surface.texture, attributes[:, 3:])
        cosines = np.clip(np.einsum("pc,lc->pl", normal, lighting.directions.astype(np.float32)), 0, None)  # [P, L]
        irradiance = lighting.ambient + np.einsum("pl,lc->pc", cosines, lighting.colors.astype(np.float32))
        linear = np.empty((len(ok), 3), np.float32)
        linear[:] = np.asarray(background, np.float32) ** 2.2
        linear[ok] = np.clip(albedo * irradiance, 0, 1)
        rgb = _box(linear.reshape(H, s, W, s, 3)) ** (1 / 2.2)  # average in linear
        mask = _box(ok.reshape(H, s, W, s).astype(np.float32))
        depth = np.where(ok, hit["tfar"] * z_per_t, 0.0).reshape(H, s, W, s)[:, s // 2, :, s // 2]
        return rgb.astype(np.float32), mask.astype(np.float32), depth.astype(np.float32)
