"""Batched rendering: forward+backward time per view of the tile renderer under vmap, against one view alone.

    .venv/bin/python benchmarks/render_batched.py [--size 96x128] [--gaussians 2371] [--views 1,4,8]

Training renders its [B, M] supervision views with nested vmaps (`train.objective.render_views`) and the
per-subject fit its N input views with one; both are only as fast as the batched backward. For each batch
shape it times value_and_grad of sum(rgb * w) w.r.t. all Gaussian attributes (a head-sized scene, cameras on
an orbit), compiled ahead of time, median of 5 runs after one warm-up, and divides by the number of views.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from render import BACKGROUND, compile_fn, time_ms  # benchmarks/render.py

from headsup_jax.render import rasterize
from headsup_jax.render.cameras import orbit
from headsup_jax.render.scenes import head_scene

RUNS = 5


def loss(g, cam, w):
    return jnp.sum(rasterize(g, cam, background=BACKGROUND, backend="xla").rgb * w)


def per_view_ms(fn, args, views: int) -> float:
    """Median ms of one compiled call of `fn(*args)`, divided by the views it renders."""
    return time_ms(compile_fn(fn, args), args, RUNS, 1) / views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="96x128", help="WIDTHxHEIGHT")
    p.add_argument("--gaussians", type=int, default=2371)
    p.add_argument("--views", default="1,4,8", help="cameras under one vmap")
    p.add_argument("--scenes", type=int, default=4, help="scenes of the nested row (x 2 cameras)")
    a = p.parse_args()
    W, H = (int(v) for v in a.size.split("x"))
    rng = np.random.default_rng(0)
    stack = lambda items: jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *items)
    g = jax.tree.map(jnp.asarray, head_scene(0, a.gaussians))
    cams = orbit(max(int(v) for v in a.views.split(",")), 0.6, W, H, 30.0)
    print(f"jax {jax.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {W}x{H}, "
          f"{a.gaussians} Gaussians, XLA backend; fwd+bwd per view, median of {RUNS}\n")
    rows = ["| batch | views | ms per view | x one view |", "|---|---:|---:|---:|"]
    grad = jax.grad(loss)
    one = per_view_ms(grad, (g, cams[0], jnp.asarray(rng.uniform(size=(H, W, 3)), jnp.float32)), 1)
    rows.append(f"| one view, no vmap | 1 | {one:.1f} | 1.00 |")
    for m in [int(v) for v in a.views.split(",")]:
        w = jnp.asarray(rng.uniform(size=(m, H, W, 3)), jnp.float32)
        t = per_view_ms(jax.vmap(grad, (None, 0, 0)), (g, stack(cams[:m]), w), m)
        rows.append(f"| vmap over cameras | {m} | {t:.1f} | {t / one:.2f} |")
    scenes = stack([head_scene(s, a.gaussians) for s in range(a.scenes)])
    w = jnp.asarray(rng.uniform(size=(a.scenes, 2, H, W, 3)), jnp.float32)
    nested = jax.vmap(jax.vmap(grad, (None, 0, 0)), (0, None, 0))
    t = per_view_ms(nested, (scenes, stack(cams[:2]), w), 2 * a.scenes)
    rows.append(f"| vmap over scenes, vmap over cameras | {a.scenes} x 2 | {t:.1f} | {t / one:.2f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
