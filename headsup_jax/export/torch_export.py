"""A HeadsUp model -> one self-contained safetensors file for `headsup_jax.export.torch_model`.

Names are the JAX model's module paths joined by dots with torch's leaf names (`kernel`/`scale` ->
`weight`), e.g. `encoder.stem.weight`, `compressor.blocks.0.cross.q.weight`; layouts are torch's: conv
kernels OIHW, linear kernels [out, in], attention projections flattened heads-major ([H * Dh, D] for
q/k/v, [D, H * Dh] for out). Scanned compressor blocks (l, xl) are unstacked into `blocks.0 .. depth-1`.
Buffers: `template_vertices`, `compressor.prior`, `compressor.points`, `background.means/quats/scales`,
`pixel_aligned.points/normals/valid` (model.pixel_aligned: each latent cell's pooled sub-block points) and
the atlas binding `atlas.texel_index/vertex_ids/barycentrics/corner_uvs`. The config (the torch
model's constructor arguments, the anchoring constants and the run config) is the metadata entry
`headsup_config`, also written beside as `<out>.json`. Writing needs no torch; checking does.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from etils import epath
from flax import nnx
from safetensors.numpy import save

from headsup_jax.errors import InputError
from headsup_jax.fileio import write_bytes_atomic, write_text_atomic
from headsup_jax.geometry.anchor import MAX_FOOTPRINT, NORMAL_SCALE, OPACITY_BIAS, TANGENT_SCALE
from headsup_jax.model.decoder import ATTRIBUTES
from headsup_jax.model.layers import Buffer
from headsup_jax.render.cameras import orbit

FORMAT_VERSION = 1
LEAF_NAMES = {"kernel": "weight", "scale": "weight"}


def _to_torch(module, leaf: str, value: np.ndarray) -> np.ndarray:
    """One parameter of `module` in torch's layout."""
    if leaf == "kernel" and isinstance(module, nnx.Conv):
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if leaf == "kernel" and isinstance(module, nnx.Linear):
        return value.T  # [in, out] -> [out, in]
    if isinstance(module, nnx.LinearGeneral):  # kernel in_features + out_features; bias out_features
        fan_in = int(np.prod(module.in_features))
        return value.reshape(fan_in, -1).T if leaf == "kernel" else value.reshape(-1)
    return value


def torch_state(model) -> dict[str, np.ndarray]:
    """Every parameter and buffer of a HeadsUp model (any sharding over local devices), plus the atlas
    binding, under its torch name and layout (float32; indices int64)."""
    modules = {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
    scanned = getattr(model.compressor, "scan_layers", False)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, Buffer))):
        path = tuple(str(p) for p in path)
        value = np.asarray(jax.device_get(var.get_value()), np.float32)
        module = modules[tuple(_key(p) for p in path[:-1])]
        leaf = LEAF_NAMES.get(path[-1], path[-1])
        if scanned and path[:2] == ("compressor", "blocks"):
            for i, layer in enumerate(value):  # stacked over depth
                out[".".join(path[:2] + (str(i),) + path[2:-1] + (leaf,))] = _to_torch(module, path[-1], layer)
        else:
            out[".".join(path[:-1] + (leaf,))] = _to_torch(module, path[-1], value)
    vertex_ids, barycentrics, corner_uvs = model.atlas.binding()
    out.update({"atlas.texel_index": model.atlas.texel_index.astype(np.int64),
                "atlas.vertex_ids": vertex_ids.astype(np.int64),
                "atlas.barycentrics": barycentrics.astype(np.float32),
                "atlas.corner_uvs": corner_uvs.astype(np.float32)})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _key(p: str):
    return int(p) if p.isdigit() else p


def torch_spec(model, config, step: int | None = None) -> dict:
    """The torch model's constructor arguments (and the run's config, for the record)."""
    m, bg = config.model, config.background
    pa = m.get("pixel_aligned", {})
    return {
        "format": "headsup-torch", "version": FORMAT_VERSION, "step": step,
        "model": {k: m[k] for k in ("dim", "latent_size", "depth", "heads", "mlp_ratio", "self_attention",
                                     "encoder_widths", "encoder_blocks", "decoder_widths", "decoder_blocks",
                                     "offset_scale", "ray_bias")}
                 | {"texel_head": bool(m.get("texel_head", False)),
                    "pixel_aligned": {"enabled": bool(pa.get("enabled", False)), "samples": int(pa.get("samples", 0))}},
        "background": {k: bg[k] for k in ("enabled", "num_gaussians", "code_dim", "width")},
        "atlas": {"resolution": model.atlas.resolution, "count": model.atlas.count,
                  "texel_size": model.atlas.texel_size},
        "template": {"num_vertices": int(model.template_vertices.shape[0])},
        "prior_features": int(model.compressor.prior.shape[-1]),
        "attributes": [[name, n] for name, n in ATTRIBUTES],
        "anchor": {"tangent_scale": TANGENT_SCALE, "normal_scale": NORMAL_SCALE, "opacity_bias": OPACITY_BIAS,
                   "max_footprint": MAX_FOOTPRINT},
        "inputs": {"image_size": list(config.data.image_size), "num_views": config.data.num_inputs},
        "run_config": json.loads(config.to_json()),
    }


def output_path(out) -> epath.Path:
    """`out` as a path, or an InputError unless it ends in .safetensors."""
    out = epath.Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"{out}: --out must end in .safetensors")
    return out


def export_torch(model, config, out, step: int | None = None) -> tuple[epath.Path, epath.Path]:
    """Writes `out` (.safetensors; local or gs://) and `out` with suffix .json, atomically -> both paths."""
    out = output_path(out)
    spec = json.dumps(torch_spec(model, config, step), indent=1, default=_plain)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, save(torch_state(model), metadata={"headsup_config": spec}))
    side = out.with_suffix(".json")
    write_text_atomic(side, spec + "\n")
    return out, side


def _plain(x):
    return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else list(x)


def require_torch():
    """torch, or an InputError naming the package to install."""
    try:
        import torch
    except ImportError as e:
        raise InputError(f"the PyTorch export needs the 'torch' package ({e}); install it, e.g. "
                         "pip install torch (CPU builds: --index-url https://download.pytorch.org/whl/cpu)") from e
    return torch


def parity_errors(jax_gaussians, torch_gaussians) -> dict[str, float]:
    """Per attribute max |torch - jax| / max |jax| (quats compared up to sign, after normalising)."""
    errors = {}
    for name in ("means", "quats", "scales", "opacities", "sh"):
        ref = np.asarray(getattr(jax_gaussians, name), np.float64)
        got = np.asarray(getattr(torch_gaussians, name).detach().cpu().numpy(), np.float64)
        if name == "quats":
            ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
            got = got / np.linalg.norm(got, axis=-1, keepdims=True)
            got = got * np.where(np.sum(ref * got, -1, keepdims=True) < 0, -1.0, 1.0)
        errors[name] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    return errors


def probe_inputs(config, views: int | None = None, batch: int = 1, seed: int = 0):
    """Random images (seeded) from an orbit of cameras around the head at the config's image size and
    number of views -> images [B, N, H, W, 3], K [B, N, 3, 3], world_to_cam [B, N, 4, 4] (NumPy)."""
    H, W = config.data.image_size
    N = views or config.data.num_inputs
    cams = orbit(N, 0.6, W, H, fov_y_degrees=35.0, elevation_degrees=10.0)
    stack = lambda field: np.broadcast_to(np.stack([np.asarray(getattr(c, field), np.float32) for c in cams]),
                                          (batch, N) + np.shape(getattr(cams[0], field)))
    images = np.random.default_rng(seed).random((batch, N, H, W, 3), dtype=np.float32)
    return images, stack("K"), stack("world_to_cam")


def check_export(model, path, images, K, world_to_cam) -> dict[str, float]:
    """Loads `path` into the torch model (strict) and compares both models' Gaussians on the same inputs
    (NumPy [B, N, H, W, 3], [B, N, 3, 3], [B, N, 4, 4]) -> parity_errors."""
    torch = require_torch()
    from headsup_jax.export.torch_model import load_model

    torch_model = load_model(epath.Path(path).read_bytes())  # local or gs://
    with torch.no_grad():
        got, _ = torch_model(*(torch.from_numpy(np.array(x, np.float32)) for x in (images, K, world_to_cam)))
    ref, _ = model(images, K, world_to_cam)
    return parity_errors(ref, got)
