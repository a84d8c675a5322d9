"""HeadsUp in pure PyTorch: the mirror of headsup_jax.model and geometry.anchor for exported weights.

    from headsup_jax.export.torch_model import load_model
    model = load_model("model.safetensors")           # strict load; the config is in the file's metadata
    gaussians, aux = model(images, K, world_to_cam)   # [B, N, H, W, 3] in [0, 1], [B, N, 3, 3], [B, N, 4, 4]

Only torch and safetensors are imported (no JAX). Everything the forward pass needs is in the file: the
parameters, the template vertices, the atlas binding of each Gaussian, the compressor's pooled prior
and points, and (model.pixel_aligned) each latent cell's pooled sub-block points and normals; the
anchoring constants and the attribute layout come from the config in its metadata.
Module and parameter names follow the JAX model's (README, "PyTorch"). Computes in float32.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Gaussians(NamedTuple):
    """Batched Gaussians: means [B, G, 3], quats [B, G, 4] (w, x, y, z), scales [B, G, 3] (linear),
    opacities [B, G] in [0, 1], sh [B, G, K, 3]."""
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor


# --- layers (model/layers.py) ---

class Conv(nn.Conv2d):
    """A conv with XLA's "SAME" padding (stride 2 pads only the bottom/right of even sizes). NHWC in/out."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride)

    def forward(self, x):  # [B, H, W, Cin] -> [B, H/stride, W/stride, Cout]
        x = x.permute(0, 3, 1, 2)
        pads = []
        for n in reversed(x.shape[2:]):  # F.pad wants (left, right, top, bottom)
            total = max((math.ceil(n / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads)).permute(0, 2, 3, 1)


class GroupNorm(nn.GroupNorm):
    """flax's GroupNorm: min(32, C / 4) groups (at least 1), eps 1e-6, channel-last."""

    def __init__(self, channels: int):
        super().__init__(min(32, channels // 4) or 1, channels, eps=1e-6)

    def forward(self, x):  # [B, H, W, C]
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


def gelu(x):
    return F.gelu(x, approximate="tanh")  # flax's gelu is the tanh approximation


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.norm1, self.conv1 = GroupNorm(cin), Conv(cin, cout, stride=stride)
        self.norm2, self.conv2 = GroupNorm(cout), Conv(cout, cout)
        self.skip = Conv(cin, cout, kernel=1, stride=stride) if (cin != cout or stride != 1) else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(gelu(self.up(x)))


class Attention(nn.Module):
    """q, k, v: Linear(dim, heads * head_dim) (heads major); out: Linear(heads * head_dim, dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, context, bias=None):  # [B, Q, D], [B, T, D], [B, H, Q, T] -> [B, Q, D]
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, *, Dh]
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)),
                                             attn_mask=bias)
        return self.out(out.transpose(1, 2).flatten(2))


# --- encoder (model/rays.py, model/encoder.py) ---

def camera_centre(world_to_cam):
    """-R^T t. [..., 4, 4] -> [..., 3]"""
    R, t = world_to_cam[..., :3, :3], world_to_cam[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def plucker_rays(K, world_to_cam, height: int, width: int):
    """Plücker coordinates (d, o x d) through the pixel centres. [..., 3, 3], [..., 4, 4] -> [..., H, W, 6]"""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=K.dtype) + 0.5, torch.arange(width, dtype=K.dtype) + 0.5,
                            indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [H, W, 3]
    cam_dirs = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K), pix)
    dirs = torch.einsum("...ji,...hwj->...hwi", world_to_cam[..., :3, :3], cam_dirs)  # R^T d
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    origin = camera_centre(world_to_cam)[..., None, None, :]
    moment = torch.cross(origin.expand_as(dirs), dirs, dim=-1)
    return torch.cat([dirs, moment], -1)


def ray_distance2(points, rays):
    """Squared distance from points [L, 3] to the lines of rays [B, T, 6]. -> [B, L, T]"""
    d, m = rays[..., :3], rays[..., 3:]
    along = torch.einsum("lc,btc->blt", points, d)
    across = torch.einsum("lc,btc->blt", points, torch.cross(d, m, dim=-1))
    d2 = (points ** 2).sum(-1)[None, :, None] - along ** 2 - 2.0 * across + (m ** 2).sum(-1)[:, None, :]
    return d2.clamp_min(0.0)


class ViewEncoder(nn.Module):
    def __init__(self, dim: int, widths, blocks: int):
        super().__init__()
        self.stem = Conv(3 + 6, widths[0], stride=2)
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(ResBlock(cin, width, stride=2 if (b == 0 and i > 0) else 1))
                cin = width
        self.stages = nn.ModuleList(layers)
        self.proj, self.ray_embed, self.norm = nn.Linear(cin, dim), nn.Linear(6, dim), layer_norm(dim)
        self.downsample = 2 ** len(widths)

    def forward(self, images, K, world_to_cam):  # -> tokens [B, N*h*w, dim], their rays [B, N*h*w, 6]
        B, N, H, W, _ = images.shape
        if H % self.downsample or W % self.downsample:
            raise ValueError(f"image size {H}x{W} must be a multiple of {self.downsample}")
        h, w = H // self.downsample, W // self.downsample
        rays = plucker_rays(K, world_to_cam, H, W)  # [B, N, H, W, 6]
        x = self.stem(torch.cat([images * 2.0 - 1.0, rays], -1).reshape(B * N, H, W, 9))
        for layer in self.stages:
            x = layer(x)
        scale = torch.diag(torch.tensor([w / W, h / H, 1.0], dtype=K.dtype))
        token_rays = plucker_rays(scale @ K, world_to_cam, h, w).reshape(B * N, h, w, 6)
        tokens = self.norm(self.proj(x) + self.ray_embed(token_rays))
        return tokens.reshape(B, N * h * w, -1), token_rays.reshape(B, N * h * w, 6)


# --- pixel-aligned queries (model/pixel_aligned.py) ---

def bilinear(image, xy):
    """Samples images [B, N, H, W, C] at pixel coordinates xy [B, N, P, 2] (centres at +0.5), edge-clamped
    -> [B, N, P, C]"""
    H, W, C = image.shape[2:]
    flat = image.flatten(2, 3)  # [B, N, H*W, C]
    x, y = xy[..., 0] - 0.5, xy[..., 1] - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    xi = [(x0 + d).clamp(0, W - 1).long() for d in (0, 1)]
    yi = [(y0 + d).clamp(0, H - 1).long() for d in (0, 1)]
    at = lambda i, j: torch.gather(flat, 2, (yi[i] * W + xi[j])[..., None].expand(-1, -1, -1, C))
    top = at(0, 0) * (1 - fx) + at(0, 1) * fx
    bottom = at(1, 0) * (1 - fx) + at(1, 1) * fx
    return top * (1 - fy) + bottom * fy


def project_points(points, normals, K, world_to_cam, height: int, width: int):
    """Pixel coordinates [B, N, P, 2] of points [P, 3] in every camera and the view weights [B, N, P]
    (max(0, n . unit direction to the camera); 0 behind the camera or outside the image)."""
    cam = torch.einsum("pc,bnic->bnpi", points, world_to_cam[..., :3, :3]) + world_to_cam[..., None, :3, 3]
    z = cam[..., 2]
    uv = torch.einsum("bnpc,bnic->bnpi", cam, K)[..., :2] / z.clamp_min(1e-6)[..., None]
    to_camera = camera_centre(world_to_cam)[..., None, :] - points  # [B, N, P, 3]
    facing = (normals * to_camera).sum(-1) / torch.linalg.norm(to_camera, dim=-1).clamp_min(1e-9)
    u, v = uv.unbind(-1)
    inside = (z > 1e-3) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    return uv, torch.where(inside, facing.clamp_min(0.0), torch.zeros_like(facing))


class PixelAlignedQueries(nn.Module):
    """Per latent cell: the views' colours at its s x s sub-points and their mean encoder feature -> [B, L, dim]."""

    def __init__(self, cells: int, samples: int, feature_dim: int, dim: int):
        super().__init__()
        self.samples = samples
        P = cells * samples ** 2  # each cell's s x s pooled sub-blocks, cell-major
        self.register_buffer("points", torch.zeros(P, 3))
        self.register_buffer("normals", torch.zeros(P, 3))  # unit
        self.register_buffer("valid", torch.zeros(P))  # 1 where the sub-block holds a valid texel
        self.proj = nn.Linear(samples * samples * 4 + feature_dim + 1, dim)

    def forward(self, images, features, K, world_to_cam):
        """images [B, N, H, W, 3], features [B, N, h, w, C], K [B, N, 3, 3] (at H x W), world_to_cam
        [B, N, 4, 4] -> [B, L, dim]"""
        B, N, H, W, _ = images.shape
        h, w, C = features.shape[2:]
        uv, weights = project_points(self.points, self.normals, K, world_to_cam, H, W)
        weights = weights * self.valid  # [B, N, P]
        colours = bilinear(images, uv)
        feats = bilinear(features, uv * torch.tensor([w / W, h / H], dtype=uv.dtype))
        total = weights.sum(1)  # [B, P]
        mean = lambda x: (x * weights[..., None]).sum(1) / total.clamp_min(1e-6)[..., None]
        s2 = self.samples ** 2
        L = self.points.shape[0] // s2
        colour = torch.cat([mean(colours) * 2.0 - 1.0, total.clamp_max(1.0)[..., None]], -1).reshape(B, L, s2 * 4)
        feat = mean(feats).reshape(B, L, s2, C).mean(2)  # [B, L, C]
        coverage = total.reshape(B, L, s2).mean(2, keepdim=True).clamp_max(1.0)
        return self.proj(torch.cat([colour, feat, coverage], -1))


# --- compressor (model/compressor.py) ---

class CompressorBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, self_attention: bool, ray_bias: bool):
        super().__init__()
        self.norm_q, self.norm_kv, self.cross = layer_norm(dim), layer_norm(dim), Attention(dim, heads)
        self.ray_gain = nn.Parameter(torch.zeros(heads)) if ray_bias else None  # log gain, m^-2
        self.norm_s = layer_norm(dim) if self_attention else None
        self.self_attn = Attention(dim, heads) if self_attention else None
        self.norm_m, self.mlp = layer_norm(dim), Mlp(dim, mlp_ratio * dim)

    def forward(self, x, tokens, distance2=None):  # [B, L, D], [B, T, D], [B, L, T] m^2
        bias = None if self.ray_gain is None else -self.ray_gain.exp()[None, :, None, None] * distance2[:, None]
        x = x + self.cross(self.norm_q(x), self.norm_kv(tokens), bias)
        if self.self_attn is not None:
            h = self.norm_s(x)
            x = x + self.self_attn(h, h)
        return x + self.mlp(self.norm_m(x))


class LatentCompressor(nn.Module):
    def __init__(self, latent_size: int, prior_features: int, dim: int, depth: int, heads: int, mlp_ratio: int,
                 self_attention: bool, ray_bias: bool):
        super().__init__()
        L = latent_size ** 2
        self.grid = (latent_size, latent_size)
        self.register_buffer("prior", torch.zeros(L, prior_features))  # pooled template prior [L, F]
        self.register_buffer("points", torch.zeros(L, 3) if ray_bias else None)  # queries' template points
        self.queries = nn.Parameter(torch.zeros(L, dim))
        self.prior_in, self.prior_out = nn.Linear(prior_features, dim), nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(CompressorBlock(dim, heads, mlp_ratio, self_attention, ray_bias)
                                    for _ in range(depth))
        self.norm = layer_norm(dim)

    def forward(self, tokens, token_rays, query_features=None):  # [B, T, D], [B, T, 6], [B, L, D] -> [B, Lh, Lw, D]
        q = self.queries + self.prior_out(gelu(self.prior_in(self.prior)))
        x = q.expand(tokens.shape[0], *q.shape)
        if query_features is not None:
            x = x + query_features
        distance2 = None if self.points is None else ray_distance2(self.points, token_rays)
        for block in self.blocks:
            x = block(x, tokens, distance2)
        return self.norm(x).reshape(x.shape[0], *self.grid, -1)


# --- decoder (model/decoder.py) ---

class UVDecoder(nn.Module):
    def __init__(self, dim: int, widths, blocks: int, num_attributes: int, patch: int, texel_head: bool):
        super().__init__()
        self.conv_in = Conv(dim, widths[0])
        levels, cin = [], widths[0]
        for i, width in enumerate(widths):
            level = [ResBlock(cin, width)] + [ResBlock(width, width) for _ in range(blocks - 1)]
            up = [Conv(width, widths[i + 1])] if i + 1 < len(widths) else []
            levels.append(nn.ModuleList(level + up))
            cin = widths[i + 1] if up else width
        self.levels = nn.ModuleList(levels)
        self.norm, self.head = GroupNorm(cin), Conv(cin, num_attributes, kernel=1)
        self.patch = patch  # texels per latent cell side, R / L
        self.texel_head = nn.Linear(dim, patch ** 2 * num_attributes) if texel_head else None

    def forward(self, z):  # [B, L, L, dim] -> UV map [B, R, R, A]
        x = self.conv_in(z)
        for i, level in enumerate(self.levels):
            last = i + 1 == len(self.levels)
            for block in (level if last else level[:-1]):
                x = block(x)
            if not last:
                x = level[-1](x.repeat_interleave(2, 1).repeat_interleave(2, 2))  # nearest 2x
        out = self.head(F.silu(self.norm(x)))
        if self.texel_head is not None:  # each cell's (R / L)^2 texels
            B, L, p = z.shape[0], z.shape[1], self.patch
            cells = self.texel_head(z).reshape(B, L, L, p, p, -1)
            out = out + cells.permute(0, 1, 3, 2, 4, 5).reshape(out.shape)  # [B, R, R, A]
        return out


# --- background (model/background.py) ---

class BackgroundModel(nn.Module):
    def __init__(self, num_gaussians: int, code_dim: int, width: int):
        super().__init__()
        self.convs = nn.ModuleList([Conv(3, width, stride=2), Conv(width, width, stride=2),
                                    Conv(width, width, stride=2)])
        self.to_code, self.hidden = nn.Linear(width, code_dim), nn.Linear(code_dim, width)
        self.out = nn.Linear(width, num_gaussians * 4)
        for name, n in (("means", 3), ("quats", 4), ("scales", 3)):
            self.register_buffer(name, torch.zeros(num_gaussians, n))

    def forward(self, images) -> Gaussians:  # [B, N, H, W, 3] -> [B, G_bg]
        B, N, H, W, _ = images.shape
        x = F.interpolate(images.reshape(B * N, H, W, 3).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear",
                          align_corners=False, antialias=True).permute(0, 2, 3, 1) * 2.0 - 1.0
        for c in self.convs:
            x = F.silu(c(x))
        code = self.to_code(x.reshape(B, -1, x.shape[-1]).mean(1))
        raw = self.out(gelu(self.hidden(code))).reshape(B, -1, 4)  # colour (3), opacity logit
        batch = lambda t: t.expand(B, *t.shape)
        sh = (torch.sigmoid(raw[..., :3]) - 0.5) / 0.2820947917738781  # colour -> SH DC
        return Gaussians(batch(self.means), batch(self.quats), batch(self.scales), torch.sigmoid(raw[..., 3] + 4.0),
                         sh[..., None, :])


# --- anchoring (geometry/anchor.py) ---

def _normalize(x, eps=1e-12):
    return x / (x * x).sum(-1, keepdim=True).clamp_min(eps).sqrt()


def matrix_to_quat(m):
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4] (Shepperd's method)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    root = lambda x: 2 * x.clamp_min(1e-12).sqrt()
    s0, s1 = root(1 + m00 + m11 + m22), root(1 + m00 - m11 - m22)
    s2, s3 = root(1 - m00 + m11 - m22), root(1 - m00 - m11 + m22)
    cands = torch.stack([
        torch.stack([s0 / 4, (m21 - m12) / s0, (m02 - m20) / s0, (m10 - m01) / s0], -1),
        torch.stack([(m21 - m12) / s1, s1 / 4, (m01 + m10) / s1, (m02 + m20) / s1], -1),
        torch.stack([(m02 - m20) / s2, (m01 + m10) / s2, s2 / 4, (m12 + m21) / s2], -1),
        torch.stack([(m10 - m01) / s3, (m02 + m20) / s3, (m12 + m21) / s3, s3 / 4], -1),
    ], -2)  # [..., 4, 4]
    pick = torch.stack([m00 + m11 + m22, m00, m11, m22], -1).argmax(-1)
    return _normalize(torch.take_along_dim(cands, pick[..., None, None], -2)[..., 0, :])


def quat_multiply(a, b):
    """Hamilton product of (w, x, y, z) quaternions. [..., 4]"""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


class Anchor(nn.Module):
    """The atlas binding of each Gaussian and the activations of geometry.anchor."""

    def __init__(self, count: int, resolution: int, texel_size: float, constants: dict):
        super().__init__()
        self.resolution, self.texel_size, self.constants = resolution, texel_size, constants
        self.register_buffer("texel_index", torch.zeros(count, dtype=torch.int64))  # flat i * R + j [G]
        self.register_buffer("vertex_ids", torch.zeros(count, 3, dtype=torch.int64))  # triangle corners [G, 3]
        self.register_buffer("barycentrics", torch.zeros(count, 3))  # [G, 3]
        self.register_buffer("corner_uvs", torch.zeros(count, 3, 2))  # packed atlas UVs [G, 3, 2]

    def gather(self, uv_map):  # [B, R, R, A] -> [B, G, A]
        return uv_map.flatten(1, 2)[:, self.texel_index]

    def surface_frames(self, vertices):
        """Anchor points [G, 3], frames [G, 3, 3] (tangent, bitangent, normal), footprints [G, 2]."""
        p, uv = vertices[self.vertex_ids], self.corner_uvs  # [G, 3, 3], [G, 3, 2]
        point = torch.einsum("gk,gkc->gc", self.barycentrics, p)
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
        det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
        dp_du = (e1 * d2[:, 1:] - e2 * d1[:, 1:]) / det[:, None]
        dp_dv = (e2 * d1[:, :1] - e1 * d2[:, :1]) / det[:, None]
        n = _normalize(torch.cross(e1, e2, dim=-1))
        t = _normalize(dp_du - (dp_du * n).sum(-1, keepdim=True) * n)
        b = torch.cross(n, t, dim=-1)
        along_t = ((dp_du * t).sum(-1) ** 2 + (dp_dv * t).sum(-1) ** 2).sqrt()
        along_b = (dp_dv * b).sum(-1).abs()
        footprint = torch.minimum(torch.stack([along_t, along_b], -1) / self.resolution,
                                  torch.tensor(self.constants["max_footprint"] * self.texel_size))
        return point, torch.stack([t, b, n], -1), footprint

    def forward(self, vertices, offsets, rotations, log_scales, opacity_logits, sh) -> Gaussians:
        """vertices [V, 3]; offsets [B, G, 3] metres (local frame), rotations [B, G, 4], log_scales [B, G, 3],
        opacity_logits [B, G], sh [B, G, K, 3]."""
        c = self.constants
        point, frame, footprint = self.surface_frames(vertices)
        means = point + torch.einsum("gij,bgj->bgi", frame, offsets)
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0])
        quats = quat_multiply(matrix_to_quat(frame), _normalize(identity + rotations))
        extent = torch.cat([footprint, footprint.prod(-1, keepdim=True).sqrt()], -1)  # [G, 3]
        gains = torch.tensor([c["tangent_scale"], c["tangent_scale"], c["normal_scale"]])
        scales = extent * gains * log_scales.exp()
        return Gaussians(means, quats, scales, torch.sigmoid(opacity_logits + c["opacity_bias"]), sh)


# --- the model (model/headsup.py) ---

class HeadsUp(nn.Module):
    """N calibrated views -> G head Gaussians (+ background Gaussians); built from the exported config."""

    def __init__(self, spec: dict):
        super().__init__()
        m, bg, atlas = spec["model"], spec["background"], spec["atlas"]
        self.spec = spec
        self.attributes = [(name, int(n)) for name, n in spec["attributes"]]
        self.sh_coefficients = dict(self.attributes)["sh"] // 3
        self.offset_scale = m["offset_scale"]
        self.register_buffer("template_vertices", torch.zeros(spec["template"]["num_vertices"], 3))
        self.encoder = ViewEncoder(m["dim"], m["encoder_widths"], m["encoder_blocks"])
        self.compressor = LatentCompressor(m["latent_size"], spec["prior_features"], m["dim"], m["depth"], m["heads"],
                                           m["mlp_ratio"], m["self_attention"], m["ray_bias"])
        pa = m.get("pixel_aligned", {})  # both absent from files written before they existed
        self.pixel_aligned = (PixelAlignedQueries(m["latent_size"] ** 2, pa["samples"], m["dim"], m["dim"])
                              if pa.get("enabled") else None)
        self.decoder = UVDecoder(m["dim"], m["decoder_widths"], m["decoder_blocks"], sum(n for _, n in self.attributes),
                                 atlas["resolution"] // m["latent_size"], m.get("texel_head", False))
        self.atlas = Anchor(atlas["count"], atlas["resolution"], atlas["texel_size"], spec["anchor"])
        self.background = (BackgroundModel(bg["num_gaussians"], bg["code_dim"], bg["width"])
                           if bg["enabled"] else None)

    def latent(self, images, K, world_to_cam):  # -> Z [B, Lh, Lw, dim]
        tokens, rays = self.encoder(images, K, world_to_cam)  # [B, N*h*w, D], [B, N*h*w, 6]
        extra = None
        if self.pixel_aligned is not None:
            B, N, H, W, _ = images.shape
            d = self.encoder.downsample
            extra = self.pixel_aligned(images, tokens.reshape(B, N, H // d, W // d, -1), K, world_to_cam)
        return self.compressor(tokens, rays, extra)

    def head_gaussians(self, uv_map, vertices=None) -> tuple[Gaussians, dict]:
        """UV map [B, R, R, A] -> head Gaussians [B, G] on `vertices` [V, 3] (default: the template)."""
        flat, raw, start = self.atlas.gather(uv_map), {}, 0
        for name, n in self.attributes:
            raw[name], start = flat[..., start:start + n], start + n
        raw["offset"] = raw["offset"] * self.offset_scale
        vertices = self.template_vertices if vertices is None else vertices
        sh = raw["sh"].unflatten(-1, (self.sh_coefficients, 3))
        return self.atlas(vertices, raw["offset"], raw["rotation"], raw["log_scale"], raw["opacity"][..., 0], sh), raw

    def forward(self, images, K, world_to_cam) -> tuple[Gaussians, dict]:
        """[B, N, H, W, 3] in [0, 1], [B, N, 3, 3], [B, N, 4, 4] -> Gaussians [B, G (+ G_bg)] and
        {"uv_map": [B, R, R, A], "offsets": [B, G, 3]}."""
        uv_map = self.decoder(self.latent(images, K, world_to_cam))
        gaussians, raw = self.head_gaussians(uv_map)
        if self.background is not None:
            back = self.background(images)
            k = max(gaussians.sh.shape[-2], back.sh.shape[-2])
            pad = lambda g: g._replace(sh=F.pad(g.sh, (0, 0, 0, k - g.sh.shape[-2])))
            gaussians = Gaussians(*(torch.cat(pair, 1) for pair in zip(pad(gaussians), pad(back))))
        return gaussians, {"uv_map": uv_map, "offsets": raw["offset"]}


def load_model(source, map_location="cpu") -> HeadsUp:
    """The model of an exported file (`headsup export torch`; a path, or its bytes), loaded with strict=True,
    in eval mode."""
    from safetensors.torch import load

    data = source if isinstance(source, bytes) else pathlib.Path(source).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # the safetensors header
    metadata = header.get("__metadata__") or {}
    if "headsup_config" not in metadata:
        raise ValueError(f"{source if not isinstance(source, bytes) else 'data'}: no 'headsup_config' in the "
                         "safetensors metadata; not a `headsup export torch` file")
    model = HeadsUp(json.loads(metadata["headsup_config"]))
    model.load_state_dict(load(data), strict=True)
    return model.to(map_location).eval()
