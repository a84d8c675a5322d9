"""The fidelity protocol as one table: a trained run against its reference points on the same views.

    python benchmarks/fidelity.py --workdir outputs/demo [--data DATASET_OR_CAPTURES --split test]
        [--subjects 6] [--views 1,2,4,8,12] [--fit-views 4|none] [--fit-steps 600] [--targets 4]

Held-out identities (the test split; never trained on), novel views disjoint from the inputs and the
same for every N (a permutation's last `targets` cameras), images composited on the backdrop; PSNR,
SSIM (and LPIPS when the run's config names LPIPS weights) over the whole frame and the head region
(mask dilated by 3 px), mean over subjects and views. Rows: the model at each N, the template in the
training data's mean head colour, per-subject fitting on N input views, and fitting on all of a
subject's views (the ceiling of the representation). Columns also give the wall time of training (from
the run's checkpoint record), of one reconstruction (a forward pass, compilation excluded) and of one fit.
"""
from __future__ import annotations

import argparse
import sys
import time
import types

import jax
import numpy as np
from flax import nnx

from headsup_jax.eval.evaluate import evaluate_batches
from headsup_jax.eval.fit import FitSettings, SubjectFitter
from headsup_jax.eval.references import fit_reference, mean_head_colour, template_baseline
from headsup_jax.infer.trained import load_trained
from headsup_jax.train.data import eval_batches, eval_source

METRICS = ("psnr", "ssim", "lpips", "psnr_head", "ssim_head", "lpips_head")


def _row(name, n, metrics, train_s="", recon_s="", fit_s=""):
    cells = [f"{float(np.mean(metrics[k])):.3f}" if k in metrics else "-" for k in METRICS]
    return f"| {name} | {n} | " + " | ".join(cells) + f" | {train_s} | {recon_s} | {fit_s} |"


def _forward_seconds(trained, batch) -> float:
    """One subject's forward pass (compiled first, then timed)."""
    graphdef, state = nnx.split(trained.model)
    fn = jax.jit(lambda s, x, k, w: nnx.merge(graphdef, s)(x, k, w)[0].means)
    args = (batch["inputs"][:1], batch["input_cameras"]["K"][:1], batch["input_cameras"]["world_to_cam"][:1])
    jax.block_until_ready(fn(state, *args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(state, *args))
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", help="a built dataset or a folder of captures (default: the run's dataset)")
    p.add_argument("--split", default="test")
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--views", default="1,2,4,8,12", help="input views of the model rows")
    p.add_argument("--fit-views", default="4", help="input views of the per-subject fitting rows; 'none': no fits "
                   "(they do not depend on the trained model: rerun them only for other subjects or data)")
    p.add_argument("--fit-steps", type=int, default=600)
    a = p.parse_args(argv)

    trained = load_trained(a.workdir)
    config = trained.config
    from headsup_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(a.workdir, config.checkpoint.every, config.checkpoint.keep)
    records = ckpt.data_states(trained.step)
    ckpt.close()
    train_s = f"{records[0].get('train_seconds', float('nan')):.0f} s" if records else "?"
    source, name = eval_source(config, a.workdir, a.split, a.data)
    colour = mean_head_colour(next(eval_batches(config, eval_source(config, a.workdir, "train")[0], 64, a.targets,
                                                batch_size=64)))

    def batch_for(n):
        config.data.num_inputs = n
        return next(eval_batches(config, source, a.subjects, a.targets, batch_size=a.subjects))

    reference = types.SimpleNamespace(config=config, template_vertices=trained.template.vertices, atlas=trained.atlas)
    print(f"# fidelity: {a.workdir} (step {trained.step}) on {name}: {a.subjects} subjects x {a.targets} novel views, "
          f"G = {trained.atlas.count}, images {tuple(config.data.image_size)}\n", file=sys.stderr)
    rows = ["| method | N | PSNR | SSIM | LPIPS | PSNR head | SSIM head | LPIPS head | train | recon | fit |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    model_views = [int(v) for v in a.views.split(",")]
    fit_views = [] if a.fit_views == "none" else [int(v) for v in a.fit_views.split(",")]
    for n in model_views:
        batch = batch_for(n)
        result = evaluate_batches(trained.experiment, trained.state, [batch])
        rows.append(_row("HeadsUp (feed-forward)", n, result["metrics"], train_s,
                         f"{1000 * _forward_seconds(trained, batch):.0f} ms"))
        print(rows[-1], file=sys.stderr)
    batch = batch_for((fit_views or model_views)[0])
    rows.append(_row("template, mean colour", "-", template_baseline(reference, batch, colour)))
    if not fit_views:
        print("\n".join(rows))
        return
    fitter = SubjectFitter(trained.template.vertices, trained.atlas, config, FitSettings(steps=a.fit_steps))
    for n in fit_views:
        fitted = fit_reference(reference, batch_for(n), fitter=fitter)
        rows.append(_row(f"per-subject fit, {a.fit_steps} steps", n, fitted["metrics"],
                         fit_s=f"{np.mean(fitted['seconds']):.1f} s"))
        print(rows[-1], file=sys.stderr)
    cameras = len(source[0]["camera_ids"])
    ceiling = fit_reference(reference, batch_for(cameras - a.targets), on="all", fitter=fitter)
    rows.append(_row(f"per-subject fit, all views (ceiling)", cameras, ceiling["metrics"],
                     fit_s=f"{np.mean(ceiling['seconds']):.1f} s"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
