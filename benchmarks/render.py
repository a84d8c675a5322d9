"""Renderer benchmark: a dense all-pairs JAX rasterizer vs the tile renderer (custom VJP and plain autodiff).

    .venv/bin/python benchmarks/render.py [--quick] [--sizes 128:4096,256:16384]

For each (resolution, Gaussians) it times the forward pass and forward+backward (loss sum(rgb * w), gradients
w.r.t. all Gaussian attributes) of a compiled function, excluding compilation (median of a few runs), and
reports the compiled memory of forward+backward. A head-sized scene is seen by a camera, as in a capture rig.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.render import rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.rasterize import default_capacities
from headsup_jax.render.scenes import head_scene
from headsup_jax.render.tiles import TileGrid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402  (tests/reference.py: the one dense renderer, shared with the tests)

SIZES = ((128, 4096), (256, 16384), (512, 65536))
TARGET_SPEEDUP = 20.0  # dense fwd+bwd time / tile fwd+bwd time, at 512x512 with 65536 Gaussians
TARGET_MEMORY = 5.0  # autodiff fwd+bwd memory / custom-VJP fwd+bwd memory
CAMERA_EYE, FOV_Y = (0.0, 0.0, 0.6), 30.0  # the head (23 cm tall) fills about 3/4 of the image height
BACKGROUND = np.ones(3, np.float32)
BLOCK_PAIRS = 2**22  # (pixel, Gaussian) pairs per block of the dense rasterizer
DENSE_PAIRS = 2**28  # (pixel, Gaussian) pairs per timed dense call (about a minute for fwd+bwd on 2 cores)
DENSE_RUNS, TILE_RUNS = 3, 5
MEMORY_LIMIT = 12 * 2**30  # do not run programs whose compiled memory exceeds this (shared 24 GiB machine)


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------
# The dense baseline.


def dense_render(gaussians, camera, rows: tuple[int, int] | None = None):
    """The tests' dense reference renderer (tests/reference.py) on the benchmark's background: every pixel
    against every Gaussian in depth order, in blocks of BLOCK_PAIRS pairs rematerialised in the backward pass.
    rows: (first, count) renders only that band of pixel rows. Returns rgb [R, W, 3], alpha [R, W], depth [R, W]."""
    return reference.dense_render(gaussians, camera, BACKGROUND, rows, BLOCK_PAIRS)


# ----------------------------------------------------------------------------------------------------
# Measuring.


def tile_render(gaussians, camera, backend: str, caps: tuple[int, int]):
    """rasterize() with explicit capacities, images only."""
    out = rasterize(gaussians, camera, background=BACKGROUND, backend=backend, max_pairs=caps[0],
                    tile_capacity=caps[1])
    return out.rgb, out.alpha, out.depth


def loss_and_grad(render, weights):
    """value_and_grad of sum(rgb * weights) w.r.t. all Gaussian attributes, for render(gaussians, camera)."""
    return jax.value_and_grad(lambda g, cam: jnp.sum(render(g, cam)[0] * weights))


def memory_bytes(compiled) -> int:
    """Compiled memory: temp + arguments + outputs - aliased (peak_memory_in_bytes is not meaningful on CPU)."""
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def compile_fn(fn, args):
    return jax.jit(fn).lower(*args).compile()


def time_ms(compiled, args, runs: int, warmup: int) -> float:
    """Median wall time of `runs` calls after `warmup` calls, in ms (compilation excluded: AOT-compiled)."""
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def align(x: int, a: int) -> int:
    return -(-x // a) * a


def capacities(gaussians, camera) -> tuple[tuple[int, int], dict]:
    """(max_pairs, tile_capacity) with no dropped pairs: max_pairs from the renderer's default (raised to the
    pair count if needed), tile_capacity the longest tile list rounded up to 128 (so the autodiff baseline
    scans no needless padding). Returns the capacities and the render stats."""
    grid = TileGrid(camera.width, camera.height)
    caps = default_capacities(gaussians.count, grid)
    stats_fn = jax.jit(lambda g, cam, c0, c1: rasterize(g, cam, backend="xla", max_pairs=c0, tile_capacity=c1).stats,
                       static_argnums=(2, 3))
    for _ in range(4):
        stats = {k: int(v) for k, v in stats_fn(gaussians, camera, *caps).items()}
        tight = (max(caps[0], align(stats["total_pairs"], 1024)), align(max(stats["max_tile_count"], 1), 128))
        if stats["dropped_pairs"] == 0 and tight == caps:
            stats["tiles"] = grid.num_tiles
            return caps, stats
        caps = tight
    raise RuntimeError(f"capacities did not converge: {caps}, {stats}")


def check_dense(gaussians, camera, caps, weights) -> None:
    """Prints the largest difference between the dense rasterizer and rasterize(backend="xla"): images and
    the gradient of the loss (relative, over all attributes)."""
    args = (gaussians, camera)
    dense = jax.jit(dense_render)(*args)
    tile = jax.jit(lambda g, cam: tile_render(g, cam, "xla", caps))(*args)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(dense, tile))
    gd = jax.jit(loss_and_grad(dense_render, weights))(*args)[1]
    gt = jax.jit(loss_and_grad(lambda g, cam: tile_render(g, cam, "xla", caps), weights))(*args)[1]
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(gd), jax.tree.leaves(gt)))
    den = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(gt))
    log(f"check {camera.width}x{camera.height}, {gaussians.count} Gaussians: dense vs tile (xla) max |diff| of "
        f"rgb/alpha/depth = {diff:.2e} (target ~1e-4: {'ok' if diff <= 1e-4 else 'MISMATCH'}); "
        f"gradient relative L2 difference = {math.sqrt(num / den):.2e}")


@dataclasses.dataclass
class Row:
    """One table row: times in ms (None: not run), fwd+bwd memory in bytes."""

    renderer: str
    fwd: float | None
    fwd_bwd: float | None
    memory: int
    note: str = ""


def bench_tile(gaussians, camera, weights, backend: str, caps) -> Row:
    """Times rasterize(backend=...) forward and forward+backward."""
    args = (gaussians, camera)
    render = functools.partial(tile_render, backend=backend, caps=caps)
    fwd, fwd_bwd = compile_fn(render, args), compile_fn(loss_and_grad(render, weights), args)
    memory = memory_bytes(fwd_bwd)
    fwd_ms = time_ms(fwd, args, TILE_RUNS, 1)
    if memory > MEMORY_LIMIT:
        return Row(backend, fwd_ms, None, memory, f"fwd+bwd not run: memory above {MEMORY_LIMIT >> 30} GiB")
    return Row(backend, fwd_ms, time_ms(fwd_bwd, args, TILE_RUNS, 1), memory)


def bench_dense(gaussians, camera, weights, dense_pairs: int) -> Row:
    """Times the dense rasterizer; above `dense_pairs` (pixel, Gaussian) pairs per call on a central band of
    rows, extrapolated linearly in pixel count (its cost per pixel is the same everywhere). Memory is that of
    the full-image program (compiled, not run)."""
    args = (gaussians, camera)
    height = camera.height
    count = min(height, max(1, dense_pairs // (camera.width * gaussians.count)))
    band = ((height - count) // 2, count)
    render = functools.partial(dense_render, rows=band)
    fwd = compile_fn(render, args)
    fwd_bwd = compile_fn(loss_and_grad(render, weights[band[0]:band[0] + count]), args)
    full = fwd_bwd if count == height else compile_fn(loss_and_grad(dense_render, weights), args)
    scale = height / count
    note = "" if count == height else f"timed on {count} of {height} rows, x{scale:g}"
    return Row("dense", scale * time_ms(fwd, args, DENSE_RUNS, 1), scale * time_ms(fwd_bwd, args, DENSE_RUNS, 1),
               memory_bytes(full), note)


def bench_size(resolution: int, num_gaussians: int, dense_pairs: int) -> list[Row]:
    """All renderers on the head scene at one (resolution, Gaussians)."""
    camera = jax.device_put(look_at(CAMERA_EYE, resolution, resolution, FOV_Y))
    gaussians = jax.device_put(head_scene(0, num_gaussians))
    weights = jnp.asarray(np.random.default_rng(1).uniform(size=(resolution, resolution, 3)), jnp.float32)
    caps, stats = capacities(gaussians, camera)
    log(f"{resolution}x{resolution}, {num_gaussians} Gaussians: capacities max_pairs={caps[0]}, "
        f"tile_capacity={caps[1]}; dropped_pairs={stats['dropped_pairs']}, visible={stats['visible']}, "
        f"pairs={stats['total_pairs']}, tiles={stats['tiles']}, mean tile count="
        f"{stats['total_pairs'] / stats['tiles']:.0f}, max_tile_count={stats['max_tile_count']}")
    rows = []
    for bench in (lambda: bench_dense(gaussians, camera, weights, dense_pairs),
                  lambda: bench_tile(gaussians, camera, weights, "xla", caps),
                  lambda: bench_tile(gaussians, camera, weights, "xla_autodiff", caps)):
        rows.append(bench())
        r = rows[-1]
        log(f"  {r.renderer}: fwd {fmt(r.fwd)} ms, fwd+bwd {fmt(r.fwd_bwd)} ms, "
            f"fwd+bwd memory {r.memory / 2**20:.1f} MB {r.note}")
    return rows


# ----------------------------------------------------------------------------------------------------
# Report.


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def print_table(results: dict[tuple[int, int], list[Row]]) -> None:
    """The markdown table: one row per (size, renderer), ratios on the tile renderers' rows."""
    log("\n| resolution | Gaussians | renderer | fwd ms | fwd+bwd ms | fwd+bwd memory MB | dense / tile fwd+bwd "
        "time | autodiff / custom-VJP fwd+bwd memory |")
    log("|---|---|---|---:|---:|---:|---:|---:|")
    for (res, n), (dense, tile, autodiff) in results.items():
        extras = {"dense": ("", ""), "xla": (fmt(ratio(dense.fwd_bwd, tile.fwd_bwd)) + "x", ""),
                  "xla_autodiff": ("", fmt(ratio(autodiff.memory, tile.memory)) + "x")}
        for r in (dense, tile, autodiff):
            name = r.renderer + (f" ({r.note})" if r.note else "")
            log(f"| {res}x{res} | {n} | {name} | {fmt(r.fwd)} | {fmt(r.fwd_bwd)} | {r.memory / 2**20:,.1f} | "
                f"{extras[r.renderer][0]} | {extras[r.renderer][1]} |")


def print_targets(results: dict[tuple[int, int], list[Row]]) -> None:
    """Targets: tile >= 20x faster than dense (fwd+bwd) at 512x512/65536, memory >= 5x below autodiff."""
    key = (512, 65536)
    if key in results:
        dense, tile, _ = results[key]
        speedup = ratio(dense.fwd_bwd, tile.fwd_bwd)
        log(f"target: tile renderer >= {TARGET_SPEEDUP:g}x faster than dense for fwd+bwd at 512x512/65536: "
            f"{fmt(speedup)}x -> {'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'} "
            f"(forward alone: {fmt(ratio(dense.fwd, tile.fwd))}x)")
    else:
        log(f"target: tile renderer >= {TARGET_SPEEDUP:g}x faster than dense at 512x512/65536: not measured "
            f"in this run")
    for (res, n), (_, tile, autodiff) in results.items():
        saving = autodiff.memory / tile.memory
        log(f"target: fwd+bwd memory >= {TARGET_MEMORY:g}x below plain autodiff at {res}x{res}/{n}: "
            f"{saving:.1f}x -> {'MET' if saving >= TARGET_MEMORY else 'NOT MET'}")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'128:4096,256:16384' -> [(128, 4096), (256, 16384)]"""
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 128x128 with 4096 Gaussians")
    parser.add_argument("--sizes", type=parse_sizes, default=list(SIZES),
                        help="resolution:gaussians,... (default 128:4096,256:16384,512:65536)")
    parser.add_argument("--dense-pairs", type=int, default=DENSE_PAIRS,
                        help="(pixel, Gaussian) pairs per timed dense call; larger images are timed on a band of "
                             "rows and extrapolated")
    args = parser.parse_args()
    sizes = [SIZES[0]] if args.quick else args.sizes
    log(f"jax {jax.__version__} on {jax.devices()[0].platform}; head scene seen from {CAMERA_EYE} (fov_y "
        f"{FOV_Y:g} deg), white background; loss sum(rgb * w), w ~ U(0, 1) fixed; median of {TILE_RUNS} (tile) / "
        f"{DENSE_RUNS} (dense) runs after one warm-up, compilation excluded; memory = temp + argument + output "
        f"- alias bytes of the compiled fwd+bwd program (memory_analysis); load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores")
    camera = jax.device_put(look_at(CAMERA_EYE, 128, 128, FOV_Y))
    gaussians = jax.device_put(head_scene(0, 4096))
    weights = jnp.asarray(np.random.default_rng(1).uniform(size=(128, 128, 3)), jnp.float32)
    check_dense(gaussians, camera, capacities(gaussians, camera)[0], weights)
    results = {(res, n): bench_size(res, n, args.dense_pairs) for res, n in sizes}
    print_table(results)
    print_targets(results)
    log(f"load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared; times are wall clock)")


if __name__ == "__main__":
    main()
