"""`headsup plan-memory`: a config's per-device memory, FLOPs and projected step time on D devices (arguments only;
the work is in scaling/memory_plan.py)."""
from __future__ import annotations

import sys


def add_plan_memory(parser) -> None:
    from headsup_jax.scaling.memory_plan import DEFAULT_MFU

    parser.add_argument("--config", required=True, help="PATH:ARG, e.g. configs/headsup.py:xl")
    parser.add_argument("--devices", type=int, required=True, help="number of devices (chips) to plan for")
    parser.add_argument("--mesh", help="DATAxFSDPxTENSOR, product = --devices (default: the config's mesh)")
    parser.add_argument("--batch", type=int, help="global batch (default: the config's data.batch_size)")
    parser.add_argument("--limit-gib", type=float, help="exit 2 when the per-device total exceeds this (GiB)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOP utilisation of the projection")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override a config value, e.g. render.tile_capacity=8192 (repeatable)")
    parser.add_argument("--json", help="also write the plan (bytes, memory_analysis, FLOPs, times) to this JSON file")
    parser.set_defaults(run=run_plan_memory)


def run_plan_memory(args) -> int:
    from headsup_jax.fileio import write_json_atomic
    from headsup_jax.scaling.memory_plan import PlanError, check_limit, format_plan, plan_memory

    progress = lambda message, seconds: print(f"  {message} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    try:
        plan = plan_memory(args.config, args.devices, args.mesh, args.batch, args.sets, progress=progress)
    except PlanError as e:
        print(f"headsup: error: {e}", file=sys.stderr)
        return 1
    print(format_plan(plan, mfu=args.mfu))
    if args.json:
        write_json_atomic(args.json, plan)
    message = check_limit(plan, args.limit_gib)
    if message:
        print(f"headsup: error: {message}", file=sys.stderr)
        return 2
    return 0
