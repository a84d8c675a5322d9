"""Pixel-aligned query features: what every view shows at each latent cell's part of the template.

Each latent cell covers an (R / L) x (R / L) block of atlas texels. `samples` x `samples` points of that
block (the valid texels' template positions and normals, pooled) are projected into every input view;
there the input image (bilinear, full resolution) and the encoder's feature map (bilinear, token
resolution) are read and averaged over the views, each view weighted by how squarely the point faces it
(max(0, normal . direction to the camera), 0 behind the camera or outside the image). The cell's feature
is [the s*s sampled colours, the mean encoder feature, the total weight], projected to the latent width
and added to the queries: the compressor starts from what the views show of its cell instead of having
to find it by attention. The decoder still sees only Z.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from headsup_jax.model.layers import Buffer, dense
from headsup_jax.render.types import camera_centre


def cell_points(position_map, normal_map, mask, latent: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled template points and unit normals of `samples` x `samples` sub-blocks of each latent cell.
    [R, R, 3] x2, [R, R] -> points, normals [L, L, s*s, 3], and which sub-blocks hold a valid texel [L, L, s*s]"""
    R = mask.shape[0]
    f = R // (latent * samples)
    if f < 1 or R % (latent * samples):
        raise ValueError(f"atlas resolution {R} is not a multiple of latent {latent} x samples {samples}")
    m = mask.astype(np.float64).reshape(latent, samples, f, latent, samples, f)
    count = m.sum((2, 5))  # [L, s, L, s]

    def pool(x):
        total = (x.astype(np.float64).reshape(latent, samples, f, latent, samples, f, 3) * m[..., None]).sum((2, 5))
        return total / np.maximum(count, 1)[..., None]

    points, normals = pool(position_map), pool(normal_map)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-9)
    reorder = lambda x: x.transpose(0, 2, 1, 3, *range(4, x.ndim)).reshape(latent, latent, samples * samples,
                                                                           *x.shape[4:])
    return (reorder(points).astype(np.float32), reorder(normals).astype(np.float32),
            reorder(count > 0))


def _bilinear(image, xy):
    """Samples image [H, W, C] at continuous pixel coordinates xy [P, 2] (centres at +0.5) -> [P, C];
    edge-clamped."""
    H, W = image.shape[:2]
    x, y = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    xi = [jnp.clip(x0, 0, W - 1).astype(jnp.int32), jnp.clip(x0 + 1, 0, W - 1).astype(jnp.int32)]
    yi = [jnp.clip(y0, 0, H - 1).astype(jnp.int32), jnp.clip(y0 + 1, 0, H - 1).astype(jnp.int32)]
    top = image[yi[0], xi[0]] * (1 - fx)[:, None] + image[yi[0], xi[1]] * fx[:, None]
    bottom = image[yi[1], xi[0]] * (1 - fx)[:, None] + image[yi[1], xi[1]] * fx[:, None]
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def project_points(points, normals, K, world_to_cam, height: int, width: int):
    """Pixel coordinates [P, 2] of points [P, 3] in one camera and the view weight [P]
    (max(0, n . unit direction to the camera); 0 behind the camera or outside the image)."""
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[:, 2]
    uv = (cam @ K.T)[:, :2] / jnp.maximum(z, 1e-6)[:, None]
    to_camera = camera_centre(world_to_cam) - points
    facing = jnp.sum(normals * to_camera, -1) / jnp.maximum(jnp.linalg.norm(to_camera, axis=-1), 1e-9)
    inside = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] <= width) & (uv[:, 1] >= 0) & (uv[:, 1] <= height)
    return uv, jnp.where(inside, jnp.maximum(facing, 0.0), 0.0)


class PixelAlignedQueries(nnx.Module):
    """Per latent cell: the views' colours at its s x s sub-points and their mean encoder feature -> [B, L, dim]."""

    def __init__(self, position_map, normal_map, mask, latent: int, samples: int, feature_dim: int, dim: int, *,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        points, normals, valid = cell_points(position_map, normal_map, mask, latent, samples)
        self.samples = samples
        self.points = Buffer(jnp.asarray(points.reshape(-1, 3)))  # [L*s*s, 3]
        self.normals = Buffer(jnp.asarray(normals.reshape(-1, 3)))
        self.valid = Buffer(jnp.asarray(valid.reshape(-1), jnp.float32))  # [L*s*s]
        self.proj = dense(samples * samples * 4 + feature_dim + 1, dim, (None, "embed"), rngs, dtype)

    def __call__(self, images, features, K, world_to_cam):
        """images [B, N, H, W, 3], features [B, N, h, w, C], K [B, N, 3, 3] (at H x W), world_to_cam
        [B, N, 4, 4] -> [B, L, dim]"""
        B, N, H, W, _ = images.shape
        h, w, C = features.shape[2:]
        to_features = jnp.array([w / W, h / H])
        pts, nrm = self.points[...], self.normals[...]

        def one_view(image, feature, k, w2c):  # -> colours [P, 3], features [P, C], weights [P]
            uv, weight = project_points(pts, nrm, k, w2c, H, W)
            return _bilinear(image, uv), _bilinear(feature, uv * to_features), weight * self.valid[...]

        colours, feats, weights = jax.vmap(jax.vmap(one_view))(images, features.astype(jnp.float32), K, world_to_cam)
        total = jnp.sum(weights, 1)  # [B, P]
        mean = lambda x: jnp.sum(x * weights[..., None], 1) / jnp.maximum(total, 1e-6)[..., None]  # noqa: E731
        L, s2 = pts.shape[0] // self.samples ** 2, self.samples ** 2
        colour = jnp.concatenate([mean(colours) * 2.0 - 1.0, jnp.minimum(total, 1.0)[..., None]], -1)  # [B, P, 4]
        colour = colour.reshape(B, L, s2 * 4)
        feat = mean(feats).reshape(B, L, s2, C).mean(2)  # [B, L, C]
        coverage = jnp.minimum(total.reshape(B, L, s2).mean(2, keepdims=True), 1.0)
        x = jnp.concatenate([colour, feat, coverage], -1)
        return self.proj(x.astype(self.proj.dtype or jnp.float32))
