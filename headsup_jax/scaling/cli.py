"""`headsup sweep plan|run|collect|report --sweep configs/scaling.py:NAME[,key=value] [--out DIR]`."""
from __future__ import annotations

import argparse
import logging

SWEEP_HELP = "sweep definition PATH:NAME[,key=value,...], e.g. configs/scaling.py:capacity,budget=compute"


def _common(parser: argparse.ArgumentParser, out: bool = True) -> None:
    parser.add_argument("--sweep", required=True, help=SWEEP_HELP)
    if out:
        parser.add_argument("--out", default=None, help="the sweep's folder (default: outputs/sweeps/NAME)")


def _out(args, sweep) -> str:
    return args.out or f"outputs/sweeps/{sweep.name}"


def _plan(args) -> None:
    from headsup_jax.scaling.sweep import load_sweep, plan, plan_table

    sweep = load_sweep(args.sweep)
    print(plan_table(sweep, plan(sweep, sweep.data.source or None, progress=True, flops=not args.no_flops)))


def _run(args) -> None:
    from headsup_jax.errors import ConfigError
    from headsup_jax.scaling.runner import emit, execute
    from headsup_jax.scaling.sweep import load_sweep

    logging.getLogger("headsup_jax").setLevel(logging.INFO)
    sweep = load_sweep(args.sweep)
    if args.emit:
        kind, folder = args.emit
        if kind not in ("slurm", "tpu"):
            raise ConfigError(f"headsup sweep run: --emit takes slurm or tpu, not {kind!r}")
        print(emit(sweep, kind, folder, _out(args, sweep)))
        return
    execute(sweep, _out(args, sweep))
    _collect(args)


def _collect(args) -> None:
    from headsup_jax.scaling.collect import collect, results_table
    from headsup_jax.scaling.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    print(results_table(collect(sweep, _out(args, sweep))))


def _report(args) -> None:
    from headsup_jax.scaling.collect import collect
    from headsup_jax.scaling.report import write_report
    from headsup_jax.scaling.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    out = _out(args, sweep)
    print(write_report(collect(sweep, out), out, args.budget, args.bootstrap))


def register(sub) -> None:
    p = sub.add_parser("plan", help="every run's overrides, parameters, FLOPs per example, steps and compute")
    _common(p, out=False)
    p.add_argument("--no-flops", action="store_true", help="parameters only (no train-step lowering, seconds)")
    p.set_defaults(run=_plan)
    p = sub.add_parser("run", help="train + evaluate every run in OUT/RUN in sequence (finished runs skipped, "
                                   "interrupted ones resumed), or write job files with --emit")
    _common(p)
    p.add_argument("--emit", nargs=2, metavar=("slurm|tpu", "DIR"),
                   help="write one job per run into DIR (a SLURM array job or a TPU queued-resource script)")
    p.set_defaults(run=_run)
    p = sub.add_parser("collect", help="each run's run.json in one table (stdout) and OUT/results.json")
    _common(p)
    p.set_defaults(run=_collect)
    p = sub.add_parser("report", help="power-law fits with bootstrap intervals, plots and OUT/report.md")
    _common(p)
    p.add_argument("--budget", type=float, default=None, help="FLOPs: state the compute-optimal size for it")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit")
    p.set_defaults(run=_report)
