"""Input pipeline throughput: batches per second of the Grain pipeline on synthetic captures.

    .venv/bin/python benchmarks/pipeline.py [--subjects 16] [--resolution 256]

Generates synthetic subjects (frontal16), builds the TFDS/ArrayRecord dataset, then times batches of
N input + M supervision views (decode, crop/resize, K, normalise) with 0, 1 and 2 Grain worker processes,
after a warm-up batch that includes the workers' start-up.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import grain

from headsup_jax.data.pipeline import PipelineConfig, make_pipeline
from headsup_jax.data.synth import SynthConfig, generate
from headsup_jax.data.tfds_builder import build_dataset, load_source
from headsup_jax.data.views import ViewSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(f"{tmp}/caps", args.subjects, SynthConfig(resolution=args.resolution), workers=2, progress=False)
        ds = build_dataset(f"{tmp}/caps", f"{tmp}/tfds", validation=0.0, test=0.0)
        source = load_source(ds, "train")
        width = int(round(0.75 * args.resolution))
        views = ViewSpec(num_inputs=10, num_targets=4, width=width, height=args.resolution)
        print("| workers | batch | views/example | image | batches/s | views/s |")
        print("|---|---|---|---|---|---|")
        for workers in (0, 1, 2):
            cfg = PipelineConfig(batch_size=4, views=views, worker_count=workers)
            it = make_pipeline(source, cfg, seed=0, shard_options=grain.sharding.ShardOptions(0, 1))
            next(it)  # warm-up: worker start-up
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            rate = args.batches / (time.perf_counter() - t0)
            print(f"| {workers} | 4 | 10 + 4 | {args.resolution} x {width} | {rate:.2f} | {rate * 4 * 14:.0f} |")


if __name__ == "__main__":
    main()
