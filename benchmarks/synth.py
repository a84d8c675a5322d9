"""Synthetic data throughput of `headsup data synth` on this machine: views/s and s/subject per template
and image height, split into stages, and the time of a 1,000-subject ICT set at 128 x 96 on 2 workers.

    .venv/bin/python benchmarks/synth.py [--subjects 6] [--run 1000]

Each (template, resolution) row runs in a fresh process (frontal16 rig, 4 rays per pixel, the default
texture resolution): set-up is the import, the template, the texel basis and the first subject's extra time
(JAX compiles `deform`); then `--subjects` subjects are timed with their stages (`Generator.seconds`):
paint, mesh (rig, deform, normals, Embree scene), render (ray casting and shading), encode (PNG) and write,
in wall seconds, and the process's CPU seconds (all its threads) per subject, which the load disturbs less.
The projection is set-up + 1,000 x s/subject / 2 (two worker processes, each with its own set-up);
`--run N` also times a real `generate` of N ICT subjects at 128 on 2 workers (written under /tmp, then
deleted). The load average (1 minute) next to each row: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

def measure(template: str, resolution: int, subjects: int) -> dict:
    """In a fresh process: set-up seconds, then views/s, s/subject and the stages of `subjects` subjects."""
    t0 = time.perf_counter()
    from headsup_jax.data.synth import STAGES, Generator, SynthConfig

    imported = time.perf_counter() - t0
    gen = Generator(SynthConfig(template=template, resolution=resolution))
    setup = imported + gen.seconds["template"] + gen.seconds["basis"]
    with tempfile.TemporaryDirectory(prefix="headsup_bench_") as out:
        t1 = time.perf_counter()
        gen.subject(0, pathlib.Path(out))  # first subject: JAX compiles deform
        first = time.perf_counter() - t1
        gen.seconds.clear()
        t1, cpu = time.perf_counter(), time.process_time()
        views = sum(gen.subject(i, pathlib.Path(out)) for i in range(1, subjects + 1))
        dt, cpu = time.perf_counter() - t1, time.process_time() - cpu
    return {"setup": setup + max(first - dt / subjects, 0.0), "views_per_s": views / dt, "s_per_subject": dt / subjects,
            "cpu_per_subject": cpu / subjects, "texture": list(gen.basis.shape),
            **{k: gen.seconds[k] / subjects for k in STAGES}, "load": os.getloadavg()[0]}


def run_generate(n: int) -> tuple[float, float]:
    """(seconds, load average) of a real `generate` of n ICT subjects at 128 on 2 workers."""
    from headsup_jax.data.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory(prefix="headsup_synth1000_", dir="/tmp") as out:
        t0 = time.perf_counter()
        generate(out, n, SynthConfig(template="ict", resolution=128), workers=2, progress=False)
        return time.perf_counter() - t0, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=6, help="timed subjects per row")
    parser.add_argument("--run", type=int, default=0, help="also generate this many ICT subjects at 128 on 2 workers")
    parser.add_argument("--one", nargs=2, metavar=("TEMPLATE", "RESOLUTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from headsup_jax.data.synth import STAGES

    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.subjects)))
        return
    print("| template | image (H x W) | texture | views/s | s/subject | CPU s/subject | paint | mesh | render | encode | "
          "write | set-up s/process | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for template in ("procedural", "ict"):
        for res in (64, 128, 256):
            out = subprocess.run([sys.executable, __file__, "--one", template, str(res), "--subjects",
                                  str(args.subjects)], check=True, capture_output=True, text=True).stdout
            r = rows[template, res] = json.loads(out.strip().splitlines()[-1])
            print(f"| {template} | {res} x {round(0.75 * res)} | {r['texture'][0]} x {r['texture'][1]} | "
                  f"{r['views_per_s']:.1f} | {r['s_per_subject']:.3f} | {r['cpu_per_subject']:.3f} | "
                  + " | ".join(f"{r[k]:.3f}" for k in STAGES) + f" | {r['setup']:.1f} | {r['load']:.1f} |", flush=True)
    r = rows["ict", 128]
    print(f"\nProjection, 1,000 ICT subjects at 128 x 96 on 2 workers: {r['setup']:.1f} s set-up + 1000 x "
          f"{r['s_per_subject']:.3f} s / 2 = {(r['setup'] + 500 * r['s_per_subject']) / 60:.1f} min "
          f"(load {r['load']:.1f})")
    if args.run:
        seconds, load = run_generate(args.run)
        print(f"Measured: `generate` of {args.run} ICT subjects at 128 x 96 on 2 workers: {seconds / 60:.1f} min "
              f"({16 * args.run / seconds:.1f} views/s, load {load:.1f} at the end)")


if __name__ == "__main__":
    main()
