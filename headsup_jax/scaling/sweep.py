"""Sweep definitions (configs/scaling.py) -> runs: each run's config, steps and compute.

A sweep spec is `PATH:NAME[,key=value,...]` (big_vision style, as `--config`). Each run is the sweep's base
config with the sweep's shared overrides, then the run's own, then its steps; under budget=compute its
steps make steps x FLOPs per example equal to the reference run's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from etils import epath

from headsup_jax.errors import ConfigError
from headsup_jax.fileio import write_json_atomic
from headsup_jax.scaling.cost import parameter_count, train_step_cost
from headsup_jax.train.config import CONFIG_FILE, load_config

# the axes a run varies, by the override that sets them
AXIS_KEYS = {"params": "model.dim", "views": "data.num_inputs", "identities": "data.max_train_subjects"}


@dataclasses.dataclass
class Run:
    name: str
    overrides: dict  # flat config keys -> values: the run's own, then its steps (shared ones excluded)
    config: object  # the run's full ConfigDict
    params: int
    flops_per_example: float  # one train step's, per example (scaling.cost)
    steps: int

    @property
    def examples(self) -> int:
        return self.steps * self.config.data.batch_size

    @property
    def compute(self) -> float:
        return self.examples * self.flops_per_example

    def summary(self) -> dict:
        return dict(name=self.name, overrides=self.overrides, params=self.params,
                    flops_per_example=self.flops_per_example, steps=self.steps, examples=self.examples,
                    compute=self.compute)


def load_sweep(spec: str):
    """`configs/scaling.py:capacity,budget=compute` -> the sweep's ConfigDict; a bad spec is a ConfigError."""
    try:
        return load_config(spec)
    except ValueError as e:
        raise ConfigError(f"--sweep {spec}: {e}") from e


def _base(spec: str) -> str:
    """The sweep's base config spec; a relative path missing from the current folder is taken from the
    repository root (configs/headsup.py:tiny works from anywhere in a source checkout)."""
    path, sep, arg = spec.partition(":")
    if not pathlib.Path(path).is_absolute() and not pathlib.Path(path).exists():
        path = str(CONFIG_FILE.parents[1] / path)
    return path + sep + arg


def run_config(sweep, overrides: dict, data_source: str | None = None):
    """The base config with the sweep's shared overrides and then `overrides` (flat keys) applied."""
    config = load_config(_base(sweep.base))
    flat = {**dict(sweep.shared), "data.rig": sweep.data.rig, **overrides}
    if data_source:
        flat["data.source"] = str(data_source)
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"sweep {sweep.name}: override {key!r} names no field of {sweep.base}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def _cost_key(config) -> str:
    """What FLOPs and parameters depend on (not steps, data source or train subjects)."""
    c = config.to_dict()
    return json.dumps([c["model"], c["atlas_resolution"], c["template"], c["background"], c["data"]["image_size"],
                       c["data"]["num_inputs"], c["data"]["num_targets"], c["loss"]], sort_keys=True, default=str)


_COSTS = {}  # flops (bool) -> {_cost_key: cost}: one lowering per distinct model a process


def _load_costs(path) -> dict:
    """The costs a sweep folder keeps (OUT/costs.json), when they were measured with this jax version."""
    import jax

    if path is None or not epath.Path(path).exists():
        return {}
    kept = json.loads(epath.Path(path).read_text())
    return kept["costs"] if kept.get("jax") == jax.__version__ else {}


def plan(sweep, data_source: str | None = None, progress: bool = False, flops: bool = True,
         cost_file=None) -> list[Run]:
    """Every run of `sweep` with its parameters, FLOPs per example (cost analysis of the lowered train step
    from abstract shapes, once per distinct model; ~10-20 s each here; `flops=False`: parameters only, FLOPs
    NaN, and compute-matched steps cannot be derived) and steps. `cost_file` (OUT/costs.json): costs kept
    from an earlier plan are read from it and new ones added, so a resumed sweep lowers nothing again."""
    import jax
    from tqdm import tqdm

    cost = train_step_cost if flops else lambda c: dict(params=parameter_count(c), flops_per_example=math.nan)
    if sweep.budget == "compute" and not flops:
        raise ConfigError(f"sweep {sweep.name}: a compute-matched budget needs the FLOPs (plan with flops)")

    costs, runs, keys = _COSTS.setdefault(flops, {}), [], set()
    stored = _load_costs(cost_file) if flops else {}
    costs.update(stored)
    lowered = False
    for name, overrides in tqdm(list(sweep.runs), desc="cost", disable=not progress):
        overrides = dict(overrides)
        config = run_config(sweep, overrides, data_source)
        key = _cost_key(config)
        keys.add(key)
        if key not in costs:
            costs[key], lowered = cost(config), True
        runs.append(Run(name, overrides, config, costs[key]["params"], costs[key]["flops_per_example"], sweep.steps))
    if sweep.budget == "compute":
        reference = next((r for r in runs if r.name == sweep.reference), None)
        if reference is None:
            raise ConfigError(f"sweep {sweep.name}: reference run {sweep.reference!r} is not one of its runs")
        for r in runs:
            r.steps = max(1, round(sweep.steps * reference.flops_per_example / r.flops_per_example))
    for r in runs:
        r.overrides["optim.total_steps"] = r.steps
        r.config.optim.total_steps = r.steps
        r.config.optim.warmup_steps = min(r.config.optim.warmup_steps, max(r.steps // 10, 1))
    if flops and lowered and cost_file is not None:
        kept = {**stored, **{k: v for k, v in costs.items() if k in keys}}
        write_json_atomic(cost_file, {"jax": jax.__version__, "costs": kept})
    return runs


def axis_values(run_overrides: dict, params: int) -> dict:
    """The swept axes a run sets -> its value on each ({"params": 1.2e5, "views": 4})."""
    values = {}
    for axis, key in AXIS_KEYS.items():
        if key in run_overrides:
            values[axis] = params if axis == "params" else run_overrides[key]
    return values


def _si(x: float) -> str:
    if math.isnan(x):
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def plan_table(sweep, runs: list[Run]) -> str:
    """Markdown: one row per run (name, overrides, parameters, FLOPs/example, steps, examples, compute), the total."""
    lines = [f"sweep `{sweep.name}` ({sweep.budget}-matched budget, base {sweep.base}, {len(runs)} runs)", "",
             "| run | overrides | params | FLOPs / example | steps | examples | compute (FLOPs) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        o = ", ".join(f"{k}={v}" for k, v in r.overrides.items() if k != "optim.total_steps")
        lines.append(f"| {r.name} | {o} | {_si(r.params)} | {_si(r.flops_per_example)} | {r.steps} | {r.examples} "
                     f"| {_si(r.compute)} |")
    total = sum(r.compute for r in runs)
    lines.append(f"| **total** | | | | {sum(r.steps for r in runs)} | {sum(r.examples for r in runs)} | {_si(total)} |")
    return "\n".join(lines)
