"""PyTorch export: `headsup_jax.export.torch_export` writes the file, `headsup_jax.export.torch_model` runs it.

Parity is measured on models whose every parameter is perturbed (the decoder's head is zero at init, which
would make the Gaussians the template's whatever the mapping): per attribute, max |torch - jax| / max |jax|
(quats up to sign) must stay under 1e-4 in float32, and deliberately wrong mappings must break it.
"""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file

from headsup_jax.cli import main
from headsup_jax.export.torch_export import (check_export, export_torch, parity_errors, probe_inputs, torch_spec,
                                            torch_state)
from headsup_jax.export.torch_model import HeadsUp, load_model
from headsup_jax.train.config import size_config
from headsup_jax.train.experiment import build_model
from train_worker import ROOT, jax_cache, run_worker  # noqa: F401 (jax_cache is a fixture)

TOLERANCE = 1e-4


def perturbed(model, seed=0):
    """Every parameter plus noise of half its spread (1/sqrt(fan-in) for constant kernels, 0.1 for vectors)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        x = np.asarray(var.get_value())
        spread = x.std() if x.std() > 0 else (1 / np.sqrt(np.prod(x.shape[:-1])) if x.ndim > 1 else 0.1)
        var.set_value(jnp.asarray(x + 0.5 * spread * rng.standard_normal(x.shape).astype(np.float32)))
    return model


def config_of(size, **model):
    config = size_config(size)
    config.template = "procedural"
    config.compute_dtype = "float32"
    config.model.update(model)
    return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """configs/headsup.py:tiny (procedural head, background on), perturbed, exported."""
    config = config_of("tiny")
    config.background.enabled = True
    model = perturbed(build_model(config)[0])
    path, side = export_torch(model, config, tmp_path_factory.mktemp("tiny") / "model.safetensors", step=7)
    return config, model, path, side


def assert_parity(errors):
    assert set(errors) == {"means", "quats", "scales", "opacities", "sh"}
    assert max(errors.values()) < TOLERANCE, errors


def test_tiny_parity_with_background_and_other_view_counts(tiny):
    config, model, path, _ = tiny
    for views in (config.data.num_inputs, 2):
        inputs = probe_inputs(config, views=views, batch=2, seed=views)
        assert_parity(check_export(model, path, *inputs))
    ref, aux = model(*inputs)
    G = model.num_gaussians
    assert ref.means.shape == (2, G + config.background.num_gaussians, 3)
    # the comparison is not of constants: the perturbed head moves, turns, scales and colours every Gaussian
    assert np.abs(np.asarray(aux["offsets"])).mean() > 1e-3
    assert np.asarray(ref.sh[:, :G]).std() > 0.1 and np.asarray(ref.opacities[:, :G]).std() > 1e-3
    assert np.asarray(ref.sh[:, G:, 0]).std() > 0.02  # the background's colours (SH DC) too


def test_s_parity(tmp_path):
    """configs/headsup.py:s unshrunk (128 x 96 images, 6 views, dim 256, depth 4, atlas 128), float32 compute."""
    config = config_of("s")
    model = perturbed(build_model(config)[0], seed=1)
    path, _ = export_torch(model, config, tmp_path / "s.safetensors")
    assert_parity(check_export(model, path, *probe_inputs(config)))


def test_names_layout_and_config(tiny):
    config, model, path, side = tiny
    tensors = load_file(str(path))
    with safe_open(str(path), framework="np") as f:
        spec = json.loads(f.metadata()["headsup_config"])
    assert json.loads(side.read_text()) == spec
    assert spec["step"] == 7 and spec["run_config"]["model"]["dim"] == 64 and spec["atlas"]["count"] == model.num_gaussians
    assert set(tensors) == set(HeadsUp(spec).state_dict())
    stem = np.asarray(model.encoder.stem.kernel[...])  # HWIO [3, 3, 9, 16]
    np.testing.assert_array_equal(tensors["encoder.stem.weight"], stem.transpose(3, 2, 0, 1))
    q = np.asarray(model.compressor.blocks[0].cross.q.kernel[...])  # [D, H, Dh]
    np.testing.assert_array_equal(tensors["compressor.blocks.0.cross.q.weight"], q.reshape(64, 64).T)
    out = np.asarray(model.compressor.blocks[0].cross.out.kernel[...])  # [H, Dh, D]
    np.testing.assert_array_equal(tensors["compressor.blocks.0.cross.out.weight"], out.reshape(64, 64).T)
    np.testing.assert_array_equal(tensors["decoder.levels.0.0.norm1.weight"],
                                  np.asarray(model.decoder.levels[0][0].norm1.scale[...]))
    np.testing.assert_array_equal(tensors["template_vertices"], np.asarray(model.template_vertices[...]))
    np.testing.assert_array_equal(tensors["atlas.texel_index"], model.atlas.texel_index)
    np.testing.assert_array_equal(tensors["compressor.points"], np.asarray(model.compressor.points[...]))
    assert tensors["atlas.texel_index"].dtype == np.int64 and tensors["encoder.stem.weight"].dtype == np.float32


def assert_breaks_parity(config, model, path, state):
    """The exported model with `state` (a corrupted copy of the file's tensors) misses the JAX model by far."""
    wrong = load_model(path)
    wrong.load_state_dict(state, strict=True)
    inputs = probe_inputs(config, batch=1)
    with torch.no_grad():
        got, _ = wrong(*(torch.from_numpy(np.array(x)) for x in inputs))
    errors = parity_errors(model(*inputs)[0], got)
    assert max(errors.values()) > 100 * TOLERANCE, errors


@pytest.mark.parametrize("corrupt", ["swap_q_k", "transpose_stem", "transpose_mlp", "ray_gain_per_block"])
def test_a_wrong_mapping_fails_parity(tiny, corrupt):
    """Wrong mappings that keep every shape (so the strict load passes) must show in the Gaussians."""
    config, model, path, _ = tiny
    state = {k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}
    prefix = "compressor.blocks.0."
    if corrupt == "swap_q_k":
        state[prefix + "cross.q.weight"], state[prefix + "cross.k.weight"] = (state[prefix + "cross.k.weight"],
                                                                              state[prefix + "cross.q.weight"])
    elif corrupt == "transpose_stem":
        state["encoder.stem.weight"] = state["encoder.stem.weight"].transpose(-1, -2).contiguous()  # OIWH
    elif corrupt == "transpose_mlp":
        name = "compressor.prior_out.weight"  # square [64, 64]: the JAX kernel left untransposed
        state[name] = state[name].T.contiguous()
    else:
        a, b = "compressor.blocks.0.ray_gain", "compressor.blocks.1.ray_gain"
        state[a], state[b] = state[b], state[a]
    assert_breaks_parity(config, model, path, state)


def test_scanned_compressor_exports_the_same_names(tmp_path):
    """l/xl scan their compressor blocks (stacked over depth): exported as blocks.0 .. depth-1 all the same."""
    config = config_of("tiny", scan_layers=True, remat=True)
    model = perturbed(build_model(config)[0], seed=2)
    plain = config_of("tiny")
    assert set(torch_state(model)) == set(torch_state(build_model(plain)[0]))
    path, _ = export_torch(model, config, tmp_path / "scanned.safetensors")
    assert_parity(check_export(model, path, *probe_inputs(config)))


def test_torch_stays_optional():
    """Importing headsup_jax (the CLI and the exporter included) loads no torch; without torch the export
    command names the package in one line."""
    script = """
import sys
import headsup_jax, headsup_jax.export.torch_export
from headsup_jax.cli import build_parser, main
build_parser()
assert "torch" not in sys.modules, "torch imported"
sys.modules["torch"] = None  # as if not installed
sys.exit(main(["export", "torch", "--workdir", "nowhere", "--out", "m.safetensors"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headsup: error:") and "'torch'" in lines[0], proc.stderr


def torch_layout(path: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """The README's naming and layout rules, written out independently of torch_export: "param/a/b/kernel"
    -> ("a.b.weight", OIHW conv / [out, in] linear / heads-major attention kernel)."""
    parts = path.split("/")[1:]
    leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
    if parts[-1] == "kernel":
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 3:  # attention: q/k/v [D, H, Dh], out [H, Dh, D]
            value = value.reshape(-1, value.shape[-1]).T if parts[-2] == "out" else value.reshape(value.shape[0], -1).T
        else:
            value = value.T
    elif value.ndim == 2 and parts[-1] == "bias":
        value = value.reshape(-1)
    return ".".join(parts[:-1] + [leaf]), value


def test_export_of_a_run_saved_on_8_devices(tmp_path, jax_cache, capsys):
    """`headsup export torch` on a tiny run trained 2 steps with parameters FSDP-sharded over 8 devices: the
    file holds the parameters the 8-device process restored, loads strictly and matches the JAX model."""
    workdir = tmp_path / "run"
    run_worker(["loop", str(tmp_path / "run.npz"), "--workdir", str(workdir), "--stop_at", "2", "--mesh", "1,8,1"],
               jax_cache, devices=8)
    saved = dict(np.load(tmp_path / "run.npz"))
    assert int(saved["step"]) == 2
    out = tmp_path / "export" / "model.safetensors"
    assert main(["export", "torch", "--workdir", str(workdir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    errors = dict(part.split() for part in printed.split("max relative error: ")[1].strip().split(", "))
    assert max(float(v) for v in errors.values()) < TOLERANCE, printed
    tensors = load_file(str(out))
    params = {k: v for k, v in saved.items() if k.startswith("param/")}
    assert params
    for key, value in params.items():
        name, expected = torch_layout(key, value)
        np.testing.assert_array_equal(tensors[name], expected, err_msg=name)
    head = saved["param/decoder/head/kernel"]
    assert np.abs(head).max() > 0  # trained: no longer the zero init
    load_model(out)  # strict
    assert json.loads(out.with_suffix(".json").read_text())["step"] == 2


def tiny_with(pixel_aligned: bool, texel_head: bool):
    """tiny with model.pixel_aligned and model.texel_head set, whatever the tiny defaults."""
    config = config_of("tiny", texel_head=texel_head)
    config.model.pixel_aligned.enabled = pixel_aligned
    return config


@pytest.fixture(scope="module")
def queries_and_texels(tmp_path_factory):
    """tiny with model.pixel_aligned and model.texel_head on (background off), perturbed, exported."""
    config = tiny_with(pixel_aligned=True, texel_head=True)
    model = perturbed(build_model(config)[0], seed=3)
    path, _ = export_torch(model, config, tmp_path_factory.mktemp("pa") / "model.safetensors")
    return config, model, path


def test_pixel_aligned_and_texel_head_parity(queries_and_texels):
    config, model, path = queries_and_texels
    assert np.abs(np.asarray(model.decoder.texel_head.kernel[...])).min() > 0  # perturbed off its zero init
    tensors = load_file(str(path))
    with safe_open(str(path), framework="np") as f:
        spec = json.loads(f.metadata()["headsup_config"])
    assert spec["model"]["texel_head"] and spec["model"]["pixel_aligned"] == {"enabled": True, "samples": 4}
    assert set(tensors) == set(HeadsUp(spec).state_dict())
    for name in ("points", "normals", "valid"):
        np.testing.assert_array_equal(tensors[f"pixel_aligned.{name}"],
                                      np.asarray(getattr(model.pixel_aligned, name)[...]))
    np.testing.assert_array_equal(tensors["decoder.texel_head.weight"],
                                  np.asarray(model.decoder.texel_head.kernel[...]).T)
    assert_parity(check_export(model, path, *probe_inputs(config)))  # the next test's inputs: traced once


@pytest.mark.parametrize("corrupt", ["no_pixel_aligned", "no_texel_head", "cell_samples_reversed",
                                     "texel_head_patch_transposed"])
def test_pixel_aligned_and_texel_head_paths_show_in_parity(queries_and_texels, corrupt):
    """Dropping either path, or reordering its layout with every shape kept, must break parity: both
    contribute to the compared Gaussians, so a mirror that got them wrong would fail the parity test."""
    config, model, path = queries_and_texels
    state = {k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}
    samples, patch = config.model.pixel_aligned.samples, config.atlas_resolution // config.model.latent_size
    if corrupt == "no_pixel_aligned":
        state["pixel_aligned.proj.weight"] = torch.zeros_like(state["pixel_aligned.proj.weight"])
        state["pixel_aligned.proj.bias"] = torch.zeros_like(state["pixel_aligned.proj.bias"])
    elif corrupt == "no_texel_head":
        state["decoder.texel_head.weight"] = torch.zeros_like(state["decoder.texel_head.weight"])
        state["decoder.texel_head.bias"] = torch.zeros_like(state["decoder.texel_head.bias"])
    elif corrupt == "cell_samples_reversed":  # [L*s*s, 3]: each cell's s*s sub-points in reverse order
        for name in ("points", "normals"):
            t = state[f"pixel_aligned.{name}"]
            state[f"pixel_aligned.{name}"] = t.reshape(-1, samples ** 2, 3).flip(1).reshape(t.shape)
    else:  # rows [p * p * A]: the cell's p x p texels read column-major
        for name in ("weight", "bias"):
            key = f"decoder.texel_head.{name}"
            t = state[key]
            state[key] = t.reshape(patch, patch, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    assert_breaks_parity(config, model, path, state)


@pytest.mark.parametrize("option", ["pixel_aligned", "texel_head"])
def test_either_option_alone_has_the_mirror_names(option):
    """Each option alone: the file's tensors are exactly the torch model's state (what a strict load needs)."""
    config = tiny_with(option == "pixel_aligned", option == "texel_head")
    model = build_model(config)[0]
    spec = torch_spec(model, config)
    names = set(torch_state(model))
    assert names == set(HeadsUp(spec).state_dict())
    assert any(n.startswith("pixel_aligned.") for n in names) == (option == "pixel_aligned")
    assert ("decoder.texel_head.weight" in names) == (option == "texel_head")
    for key in ("pixel_aligned", "texel_head"):  # a file written before the options existed has neither
        del spec["model"][key]
    assert set(HeadsUp(spec).state_dict()) == set(torch_state(build_model(tiny_with(False, False))[0]))
