"""`headsup view`: a .ply/.splat head in the browser, through viser's Gaussian splat renderer, on localhost.

viser takes centres, 3x3 covariances, RGB and opacity per Gaussian: the colour is the view-independent
degree-0 term, max(C0 * sh_0 + 0.5, 0) clipped to 1 (viser draws no higher SH); +y is up as in the
template's canonical frame, and the first camera looks at the face from the frontal rig's distance.
"""
from __future__ import annotations

import numpy as np

from headsup_jax.export.checks import load_gaussians
from headsup_jax.geometry.rigs import TARGET
from headsup_jax.render.projection import covariance
from headsup_jax.render.sh import C0


def splat_arrays(gaussians) -> dict:
    """Gaussians [P] -> viser's add_gaussian_splats arguments (float32 NumPy)."""
    cov = np.asarray(covariance(np.asarray(gaussians.quats), np.asarray(gaussians.scales)), np.float32)
    rgb = np.clip(C0 * np.asarray(gaussians.sh)[:, 0] + 0.5, 0.0, 1.0)
    return dict(centers=np.asarray(gaussians.means, np.float32), covariances=cov, rgbs=rgb.astype(np.float32),
                opacities=np.asarray(gaussians.opacities, np.float32)[:, None])


def start(path, host: str = "127.0.0.1", port: int = 8080):
    """A running viser server showing the file's Gaussians -> (server, url, count). viser moves to the next free
    port when `port` is taken."""
    import viser

    gaussians = load_gaussians(path)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.set_up_direction("+y")
    server.initial_camera.position = (TARGET[0], TARGET[1] + 0.1, 1.0)
    server.initial_camera.look_at = TARGET
    server.scene.add_gaussian_splats("/head", **splat_arrays(gaussians))
    return server, f"http://{host}:{server.get_port()}", gaussians.count


def serve(path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until interrupted, printing the address."""
    server, url, count = start(path, host, port)
    print(f"viewing {path} ({count} Gaussians) at {url} (port {server.get_port()}); Ctrl+C to stop", flush=True)
    try:
        server.sleep_forever()
    except KeyboardInterrupt:
        server.stop()
