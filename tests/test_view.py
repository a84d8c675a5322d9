"""`headsup view`: the viser page is served on 127.0.0.1 at the printed port with the file's Gaussians;
with a headless Chromium (/usr/bin/chromium) a screenshot shows the head, not a blank canvas."""
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from unittest import mock

import numpy as np
import pytest

from headsup_jax.cli import main
from headsup_jax.export.ply import save_ply
from headsup_jax.infer.view import splat_arrays
from headsup_jax.render.scenes import head_scene
from headsup_jax.render.sh import C0

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """`headsup view head.ply` in a subprocess -> (url, the printed line); stopped at the end."""
    path = tmp_path_factory.mktemp("view") / "head.ply"
    save_ply(head_scene(0, 5000), path)
    proc = subprocess.Popen([sys.executable, "-m", "headsup_jax.cli", "view", str(path), "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("viewing"):
                break
        assert lines and lines[-1].startswith("viewing"), "".join(lines)
        url = re.search(r"(http://127\.0\.0\.1:\d+)", lines[-1]).group(1)
        yield url, lines[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_splat_arrays_are_the_gaussians_covariances_and_dc_colours():
    g = head_scene(1, 200)
    a = splat_arrays(g)
    q = np.asarray(g.quats, np.float64)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    S = np.asarray(g.scales, np.float64)
    cov = np.einsum("pij,pj,pkj->pik", R, S ** 2, R)
    np.testing.assert_allclose(a["covariances"], cov, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(a["rgbs"], np.clip(C0 * g.sh[:, 0] + 0.5, 0, 1), atol=1e-6)
    assert a["opacities"].shape == (200, 1) and a["centers"].shape == (200, 3)


def test_page_is_served_at_the_printed_port(viewer):
    url, line = viewer
    assert "5000 Gaussians" in line and f"port {url.rsplit(':', 1)[1]}" in line
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        page = r.read().decode()
    assert "<html" in page.lower() and "viser" in page.lower()


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: /usr/bin/chromium (Debian package "
                    "'chromium') is not installed, so the screenshot check cannot run")
def test_screenshot_shows_the_head(viewer, tmp_path):
    from PIL import Image

    url, _ = viewer
    shot = tmp_path / "view.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                    "--window-size=800,600", "--virtual-time-budget=15000", f"--screenshot={shot}", url],
                   check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    middle = image[230:350, 340:460]  # the head: in the middle of the first view, clear of viser's panels
    skin = (middle[..., 0] - middle[..., 2] > 40).mean()  # head_scene is skin-coloured, the page white/grey
    assert skin > 0.15, f"the canvas shows no head ({skin:.0%} skin-coloured pixels in the middle)"


class FakeViser:
    """Stands in for viser.ViserServer: records where it was asked to listen, serves nothing."""

    calls = []

    def __init__(self, host, port, **kwargs):
        FakeViser.calls.append((host, port))
        self.scene, self.initial_camera = mock.MagicMock(), mock.MagicMock()

    def get_port(self):
        return FakeViser.calls[-1][1]

    def sleep_forever(self):
        raise KeyboardInterrupt

    def stop(self):
        pass


def test_view_listens_on_localhost_unless_host_is_given(tmp_path, monkeypatch, capsys):
    import viser

    path = tmp_path / "head.ply"
    save_ply(head_scene(0, 50), path)
    monkeypatch.setattr(viser, "ViserServer", FakeViser)
    FakeViser.calls.clear()
    assert main(["view", str(path), "--port", "9123"]) == 0
    assert main(["view", str(path), "--host", "0.0.0.0"]) == 0
    assert FakeViser.calls == [("127.0.0.1", 9123), ("0.0.0.0", 8080)]
    assert "at http://127.0.0.1:9123" in capsys.readouterr().out
