"""Memory plan of a config's train step on D devices, before launching: the real train step
(`headsup_jax.train.step.TrainStep`) lowered and compiled on D fake CPU devices from abstract shapes
(`jax.ShapeDtypeStruct` with the run's shardings; nothing is allocated), in a subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=D` (jax reads it once, when it starts).

Per device: parameter, optimizer-state and other model-state bytes are exact (each leaf's shard shape
under its sharding x its dtype's size); temporaries (activations, remat buffers, the renderer's tile
lists) come from the compiled program's `memory_analysis()`; the renderer's own share is measured by
compiling forward + backward of the M supervision views' rendering alone for one device's examples.
FLOPs: the compiled per-device count (loop bodies counted once), the model FLOPs of one example from an
unrolled, remat-free lowering of the same step, and a hand count for the renderer's compositing. The
memory is the CPU compiler's: XLA:TPU/GPU schedule and fuse differently (treat it as an order of magnitude).

    plan = plan_memory("configs/headsup.py:xl", devices=64, batch=64)
    print(format_plan(plan, mfu=0.4))
"""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time

from headsup_jax.errors import ConfigError

# peak dense bf16 TFLOP/s of the accelerators the step time is projected on
PEAK_TFLOPS = {"TPU v5p (459 TFLOP/s bf16)": 459.0, "H100 SXM (989 TFLOP/s dense bf16)": 989.0}
DEFAULT_MFU = 0.4
# Compositing FLOPs per evaluated (pixel, list entry) pair, counted by hand from render/composite.py:
# forward (gaussian_alpha, transmittance, 4-channel accumulation) about 30; backward (alpha recomputed,
# d_alpha, alpha_grads, 4-channel sums) about 70.
PAIR_FLOPS_FWD, PAIR_FLOPS_BWD = 30, 70
TILE_PIXELS = 16 * 16
_RESULT, _PROGRESS = "MEMORY-PLAN-RESULT ", "MEMORY-PLAN-PROGRESS "
GIB = 2**30


class PlanError(RuntimeError):
    """The planning subprocess failed (its last output lines are in the message)."""


def load_plan_config(spec: str, sets=()):
    """`--config PATH:ARG` with `--set KEY=VALUE` overrides (values parsed as Python literals, else strings)."""
    from headsup_jax.train.config import load_config

    config = load_config(spec)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        node = config
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ConfigError(f"--set {item!r}: {spec} has no key {key!r}")
            node = node[part]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            config.update_from_flattened_dict({key: value})
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
    return config


def resolve_mesh(config, devices: int, mesh: str | None = None) -> dict:
    """data, fsdp, tensor sizes from `DATAxFSDPxTENSOR` (or `DATAxFSDP`) or the config's mesh (one size may be
    -1 there: the rest of the devices); their product must be `devices`."""
    if devices < 1:
        raise ConfigError(f"--devices {devices}: must be a positive integer")
    if mesh:
        parts = mesh.lower().split("x")
        if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"--mesh {mesh!r}: expected DATAxFSDPxTENSOR of positive integers, e.g. 8x8x1")
        sizes = dict(zip(("data", "fsdp", "tensor"), [int(p) for p in parts] + [1]))
        where = f"--mesh {mesh}"
    else:
        sizes = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
        known = math.prod(v for v in sizes.values() if v != -1)
        if list(sizes.values()).count(-1) > 1 or devices % known:
            raise ConfigError(f"config.mesh {sizes} does not fit --devices {devices} (give --mesh DATAxFSDPxTENSOR)")
        sizes = {k: devices // known if v == -1 else v for k, v in sizes.items()}
        where = f"config.mesh {sizes}"
    if math.prod(sizes.values()) != devices:
        raise ConfigError(f"{where}: data x fsdp x tensor = {math.prod(sizes.values())} devices, not --devices {devices}")
    return sizes


def plan_memory(spec: str, devices: int, mesh: str | None = None, batch: int | None = None, sets=(),
                progress=None) -> dict:
    """Plans `spec`'s train step on `devices` fake CPU devices in a subprocess; the plan as a dict (see
    compile_plan). Arguments are checked here first (one-line ConfigErrors). progress(message, seconds)."""
    config = load_plan_config(spec, sets)
    sizes = resolve_mesh(config, devices, mesh)
    batch = int(batch or config.data.batch_size)
    shards = sizes["data"] * sizes["fsdp"]
    if batch < 1 or batch % shards:
        raise ConfigError(f"--batch {batch}: the global batch must be a positive multiple of data x fsdp = {shards}")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))
    request = json.dumps({"spec": spec, "sets": list(sets), "mesh": sizes, "batch": batch})
    cmd = [sys.executable, "-m", "headsup_jax.scaling.memory_plan", request]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result, tail = None, []
    for line in proc.stdout:
        if line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT):])
        elif line.startswith(_PROGRESS):
            if progress:
                progress(line[len(_PROGRESS):].strip(), time.perf_counter() - t0)
        else:
            tail = (tail + [line.rstrip()])[-20:]
    proc.wait()
    if result is None:
        raise PlanError(f"planning {spec} on {devices} devices failed (exit code {proc.returncode}); last output:\n"
                        + "\n".join(tail))
    result.update(spec=spec, sets=list(sets), wall_s=time.perf_counter() - t0)
    return result


def _progress(message: str) -> None:
    print(_PROGRESS + message, flush=True)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of jax.ShapeDtypeStruct with shardings (every shard is the same size)."""
    import jax

    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def memory_fields(compiled) -> dict:
    """temp, argument, output, alias bytes of a compiled program and total = temp + argument + output - alias."""
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output", "alias")}
    out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def _renderer_plan(config, template, atlas, per_device: int) -> dict:
    """(tile, Gaussian) pairs of the initial Gaussians (zero raw predictions: the untrained model's) in M orbit
    views from the renderer's own counters, and the memory of forward + backward of rendering `per_device`
    examples' M views compiled alone on one device."""
    import jax
    import jax.numpy as jnp

    from headsup_jax.model.decoder import NUM_ATTRIBUTES
    from headsup_jax.model.headsup import uv_to_gaussians
    from headsup_jax.render import Camera, rasterize
    from headsup_jax.render.cameras import orbit
    from headsup_jax.train.objective import render_views

    H, W = config.data.image_size
    M, R = config.data.num_targets, atlas.resolution
    uv = jnp.zeros((1, R, R, NUM_ATTRIBUTES), jnp.float32)
    verts = jnp.asarray(template.vertices, jnp.float32)
    gaussians = jax.tree.map(lambda x: x[0], uv_to_gaussians(uv, verts, atlas, config.model.offset_scale)[0])
    capacity = dict(tile_capacity=config.render.tile_capacity or None, max_pairs=config.render.max_pairs or None)
    stats_fn = jax.jit(lambda g, K, w2c: rasterize(g, Camera(world_to_cam=w2c, K=K, width=W, height=H),
                                                   backend="xla", **capacity).stats)
    cameras = orbit(M, 0.7, W, H, 30.0, elevation_degrees=-5.0)
    pairs, dropped = [], []
    for cam in cameras:
        s = stats_fn(gaussians, jnp.asarray(cam.K), jnp.asarray(cam.world_to_cam))
        pairs.append(int(s["total_pairs"]))
        dropped.append(int(s["dropped_pairs"]))
    _progress(f"renderer: {sum(pairs):,} pairs in {M} views of the initial Gaussians")

    background = jnp.asarray(config.loss.background, jnp.float32)

    def render_loss(g, K, w2c):  # g [b, G], K [b, M, 3, 3], w2c [b, M, 4, 4]
        r = render_views(g, K, w2c, H, W, background, config.render)
        return r.rgb.sum() + r.alpha.sum()

    abstract_g = jax.tree.map(lambda x: jax.ShapeDtypeStruct((per_device, *x.shape), x.dtype), gaussians)
    K = jax.ShapeDtypeStruct((per_device, M, 3, 3), jnp.float32)
    w2c = jax.ShapeDtypeStruct((per_device, M, 4, 4), jnp.float32)
    compiled = jax.jit(jax.grad(render_loss)).lower(abstract_g, K, w2c).compile()
    memory = memory_fields(compiled)
    _progress(f"renderer alone (fwd + bwd, {per_device} examples x {M} views): temp {memory['temp'] / GIB:.2f} GiB")
    return {"render_pairs": pairs, "render_dropped": dropped, "render_memory": memory}


def compile_plan(config) -> dict:
    """The plan of `config` (config.mesh: data, fsdp, tensor sizes; config.data.batch_size: the global batch)
    on this process's devices: sizes, per-device bytes, memory_analysis, FLOPs and compile times."""
    import jax
    from flax import nnx

    from headsup_jax.scaling.cost import abstract_train_step, analysis_flops, model_flops_per_example
    from headsup_jax.train.experiment import template_and_atlas
    from headsup_jax.train.optim import make_optimizer
    from headsup_jax.train.sharding import make_mesh
    from headsup_jax.train.step import TrainStep
    from headsup_jax.train.workdir import resolve_template

    config = resolve_template(config)  # "auto" -> what this machine loads
    B = config.data.batch_size
    mesh = make_mesh(**config.mesh)
    template, atlas = template_and_atlas(config)
    tx = make_optimizer(config.optim)
    experiment, state, batch = abstract_train_step(config, template, atlas, tx, mesh, B)
    model = nnx.merge(experiment.graphdef, state)[0]
    params, buffers = nnx.state(model, nnx.Param), nnx.state(model, nnx.Not(nnx.Param))
    result = {
        "size": config.get("size", ""), "template": config.template, "devices": len(jax.devices()), "mesh": dict(config.mesh), "B": B,
        "G": atlas.count, "image": list(config.data.image_size), "N": config.data.num_inputs,
        "M": config.data.num_targets, "compute_dtype": config.compute_dtype,
        "remat": bool(config.model.remat), "scan_layers": bool(config.model.scan_layers),
        "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(params))),
        "bytes": {"params": shard_bytes(params), "model_buffers": shard_bytes(buffers),
                  "optimizer": shard_bytes(state[1]), "batch": shard_bytes(batch)},
    }
    t0 = time.perf_counter()
    lowered = TrainStep(experiment).lower(state, batch)
    result["lower_s"] = time.perf_counter() - t0
    _progress(f"train step lowered in {result['lower_s']:.0f} s")
    t0 = time.perf_counter()
    compiled = lowered.compile()
    result["compile_s"] = time.perf_counter() - t0
    result["memory"] = memory_fields(compiled)
    result["compiled_flops_per_device"] = analysis_flops(compiled.cost_analysis(), missing=0.0)
    _progress(f"train step compiled in {result['compile_s']:.0f} s: {result['memory']['total'] / GIB:.2f} GiB a device")

    t0 = time.perf_counter()
    result["model_flops_per_example"] = model_flops_per_example(config, template, atlas, tx)
    _progress(f"unrolled one-example step lowered in {time.perf_counter() - t0:.0f} s: "
              f"{result['model_flops_per_example']:.3g} FLOPs")
    t0 = time.perf_counter()
    result.update(_renderer_plan(config, template, atlas, B // (config.mesh["data"] * config.mesh["fsdp"])))
    result["renderer_s"] = time.perf_counter() - t0
    return result


def check_limit(plan: dict, limit_gib: float | None) -> str | None:
    """A one-line message when the plan's per-device total exceeds `limit_gib`, else None."""
    total = plan["memory"]["total"] / GIB
    if limit_gib is None or total <= limit_gib:
        return None
    b, m = plan["bytes"], plan["mesh"]
    return (f"{plan['spec']} needs {total:.2f} GiB a device > --limit-gib {limit_gib:g} (parameters "
            f"{b['params'] / GIB:.2f}, optimizer {b['optimizer'] / GIB:.2f}, temp {plan['memory']['temp'] / GIB:.2f} "
            f"GiB) on {plan['devices']} devices, mesh {m['data']}x{m['fsdp']}x{m['tensor']}, batch {plan['B']}")


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def _tflop(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP"


def format_plan(plan: dict, mfu: float = DEFAULT_MFU, chips=None, batch: int | None = None) -> str:
    """Markdown: the memory table and projected step times for a global `batch` (default: the plan's) on
    `chips` (default: the plan's devices) of each accelerator in PEAK_TFLOPS at `mfu`."""
    r, mem, b, m = plan, plan["memory"], plan["bytes"], plan["mesh"]
    H, W = r["image"]
    per_device = r["B"] // (m["data"] * m["fsdp"])
    pairs = sum(r["render_pairs"])  # over the M target views of one example
    render_fl = pairs * TILE_PIXELS * (PAIR_FLOPS_FWD + PAIR_FLOPS_BWD)
    per_example = r["model_flops_per_example"] + render_fl
    layers = " + ".join(k for k in ("remat", "scan_layers") if r[k]) or "no remat, no scan"
    rm = r["render_memory"]
    lines = [
        f"| {r['spec']} ({r['params'] / 1e6:.1f} M params, {r['template']} template, G = {r['G']:,}, {H}x{W}, N={r['N']}, M={r['M']}, "
        f"{r['compute_dtype']}, {layers}) | per device |", "|---|---:|",
        f"| mesh data x fsdp x tensor, devices | {m['data']} x {m['fsdp']} x {m['tensor']}, {r['devices']} |",
        f"| global batch (per device) | {r['B']} ({per_device}) |",
        f"| parameters (float32 shards, exact) | {_mib(b['params'])} MiB |",
        f"| optimizer state (shards, exact) | {_mib(b['optimizer'])} MiB |",
        f"| other model state (template, atlas buffers) | {_mib(b['model_buffers'])} MiB |",
        f"| batch (inputs, targets, masks, cameras) | {_mib(b['batch'])} MiB |",
        f"| activations and temporaries (temp, memory_analysis) | {_mib(mem['temp'])} MiB |",
        f"| renderer: fwd + bwd of {per_device} x {r['M']} views compiled alone (temp; part of the row above) | "
        f"{_mib(rm['temp'])} MiB |",
        f"| **total: temp + argument + output - alias** | **{_mib(mem['total'])} MiB ({mem['total'] / GIB:.2f} GiB)** |",
        f"| ... argument / output / alias | {_mib(mem['argument'])} / {_mib(mem['output'])} / {_mib(mem['alias'])} MiB |",
        f"| lower + compile on this CPU | {r['lower_s']:.0f} + {r['compile_s']:.0f} s (plan {r['wall_s']:.0f} s) |",
        f"| compiled FLOPs per device (cost_analysis; loop bodies counted once) | "
        f"{_tflop(r['compiled_flops_per_device'])} |",
        f"| model FLOPs per example (fwd + bwd + update, unrolled, no remat) | "
        f"{_tflop(r['model_flops_per_example'])} |",
        f"| renderer pairs per example ({r['M']} views of the initial Gaussians; dropped) | {pairs:,} "
        f"({sum(r['render_dropped']):,}) |",
        f"| renderer FLOPs per example (pairs x {TILE_PIXELS} px x {PAIR_FLOPS_FWD + PAIR_FLOPS_BWD}) | "
        f"{_tflop(render_fl)} |",
    ]
    batch = batch or r["B"]
    chips = chips or (r["devices"],)
    proj = [f"| accelerator, {mfu:.0%} MFU (assumed), global batch {batch} | chips | step time (s) | "
            f"of which renderer (s) | steps/day |", "|---|---:|---:|---:|---:|"]
    for name, tflops in PEAK_TFLOPS.items():
        for n in chips:
            t = batch * per_example / (n * tflops * 1e12 * mfu)
            tr = batch * render_fl / (n * tflops * 1e12 * mfu)
            proj.append(f"| {name} | {n} | {t:.3g} | {tr:.3g} | {86400 / t:,.0f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(proj)


def _worker(request: dict) -> None:
    import jax

    config = load_plan_config(request["spec"], request["sets"])
    config.mesh = request["mesh"]
    config.data.batch_size = request["batch"]
    if len(jax.devices()) != math.prod(request["mesh"].values()):
        raise PlanError(f"{len(jax.devices())} jax devices, mesh {request['mesh']} (XLA_FLAGS not applied?)")
    print(_RESULT + json.dumps(compile_plan(config)), flush=True)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
