"""Synthetic data throughput: views per second of `headsup data synth` on this machine.

    .venv/bin/python benchmarks/synth.py [--quick]

Per (resolution, supersampling) it times whole subjects in one process (paint the UV texture, deform,
Embree-render 16 frontal views, encode and write PNGs), after one warm-up subject, and splits the time
into its parts. The last rows run `generate` with 1 and 2 worker processes (start-up included).
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np

from headsup_jax.data.appearance import paint
from headsup_jax.data.raycast import MeshRenderer, Surface
from headsup_jax.data.synth import Generator, SynthConfig, generate, sample_lighting


def time_parts(gen: Generator, index: int) -> dict:
    """Seconds spent in each stage of one subject (same work as Generator.subject, without writing)."""
    from headsup_jax.data.io import encode_png

    t = gen.template
    rng = np.random.default_rng(index)
    t0 = time.perf_counter()
    texture = paint(gen.basis, rng)
    t1 = time.perf_counter()
    renderer = MeshRenderer(Surface(gen.vertices(gen.identity(index), {}), t.faces[gen.shown],
                                    gen.basis.corner_uvs[gen.shown], texture))
    t2 = time.perf_counter()
    outs = [renderer.render(cam, sample_lighting(rng), np.full(3, 0.5), gen.config.supersample)
            for cam in gen.cameras(index)]
    t3 = time.perf_counter()
    for rgb, mask, depth in outs:
        encode_png((rgb * 255).astype(np.uint8)), encode_png((mask * 255).astype(np.uint8))
        encode_png((depth * 1000).astype(np.uint16))
    t4 = time.perf_counter()
    return {"paint": t1 - t0, "mesh": t2 - t1, "render": t3 - t2, "encode": t4 - t3}


def bench_config(resolution: int, supersample: int, subjects: int) -> dict:
    config = SynthConfig(resolution=resolution, supersample=supersample)
    gen = Generator(config)
    with tempfile.TemporaryDirectory() as out:
        gen.subject(0, pathlib.Path(out))  # warm-up (JAX compile of deform, caches)
        t0 = time.perf_counter()
        views = sum(gen.subject(i, pathlib.Path(out)) for i in range(1, subjects + 1))
        dt = time.perf_counter() - t0
    parts = [time_parts(gen, i) for i in range(1, 3)]
    mean = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    return {"views_per_s": views / dt, "s_per_subject": dt / subjects, **mean}


def bench_workers(workers: int, subjects: int, resolution: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        views = generate(out, subjects, SynthConfig(resolution=resolution), workers=workers, progress=False)
        return views / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer subjects and sizes")
    args = parser.parse_args()
    sizes = [(128, 2), (256, 1), (256, 2)] if args.quick else [(128, 2), (256, 1), (256, 2), (512, 2)]
    subjects = 2 if args.quick else 4
    print("| rig | resolution (H x W) | rays/pixel | views/s | s/subject | paint s | render s/subject | encode s |")
    print("|---|---|---|---|---|---|---|---|")
    for res, ss in sizes:
        r = bench_config(res, ss, subjects)
        print(f"| frontal16 | {res} x {int(round(0.75 * res))} | {ss * ss} | {r['views_per_s']:.1f} | "
              f"{r['s_per_subject']:.2f} | {r['paint']:.2f} | {r['render']:.2f} | {r['encode']:.2f} |")
    n = 4 if args.quick else 12
    print()
    print("| `generate` at 256, 4 rays/pixel | subjects | views/s (start-up included) |")
    print("|---|---|---|")
    for workers in (1, 2):
        print(f"| {workers} worker(s) | {n} | {bench_workers(workers, n, 256):.1f} |")


if __name__ == "__main__":
    main()
