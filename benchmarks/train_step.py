"""Train-step benchmark: step time and compiled memory vs input views and image size, the share of each stage,
and the xl config's per-device memory with FSDP on 8 devices plus projected accelerator step times (the memory
plan of `headsup plan-memory`, headsup_jax/scaling/memory_plan.py).

    .venv/bin/python benchmarks/train_step.py [--quick] [--skip-xl] [--runs 5]

Everything runs the real train step, `headsup_jax.train.step.TrainStep` (lowered and compiled ahead of time
with its shardings and donation), on synthetic batches: random images in [0, 1], cameras on an orbit
(`headsup_jax.render.cameras.orbit`), random masks. The model is freshly initialised (its zero-initialised
head puts mid-grey Gaussians on the template surface), so the renderer's work is that of the first steps.
Times: median wall time of `--runs` calls after one warm-up, compilation excluded (AOT-compiled), on a shared
CPU. Memory: temp + argument + output - alias bytes of the compiled program (`memory_analysis()`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

XL_DEVICES = 8
PAPER_BATCH = 64  # stage 1 of the paper
MFU = 0.4
TARGET_RATIO = 1.6  # step time at 16 views / at 8 views


def log(msg: str = "") -> None:
    print(msg, flush=True)


def get_config(size: str):
    from headsup_jax.train.config import size_config

    config = size_config(size)
    config.template = "procedural"  # always available; G follows the atlas
    return config


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


# ----------------------------------------------------------------------------------------------------
# The real train step.


def make_batch(config, views: int, image: tuple[int, int], batch: int, seed: int = 0) -> dict:
    """Numpy batch: random images and masks, N input cameras on an orbit, M target cameras on another one."""
    import numpy as np

    from headsup_jax.render.cameras import orbit

    H, W = image
    M = config.data.num_targets
    rng = np.random.default_rng(seed)

    def cams(n, elevation):
        cs = orbit(n, 0.7, W, H, 30.0, elevation_degrees=elevation)
        tile = lambda x: np.tile(np.stack(x)[None].astype(np.float32), (batch, 1, 1, 1))
        return {"K": tile([c.K for c in cs]), "world_to_cam": tile([c.world_to_cam for c in cs])}

    return {"inputs": rng.random((batch, views, H, W, 3), dtype=np.float32), "input_cameras": cams(views, 10.0),
            "targets": rng.random((batch, M, H, W, 3), dtype=np.float32), "target_cameras": cams(M, -5.0),
            "target_masks": rng.random((batch, M, H, W)) < 0.5}


def time_ms(fn, args_fn, runs: int, warmup: int = 1) -> float:
    """Median wall time in ms of fn(*args_fn()) (args_fn may thread state through, see time_step)."""
    import jax

    times = []
    for i in range(warmup + runs):
        args = args_fn()
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_step(experiment, batch_np, runs: int) -> dict:
    """Compiles the train step for this batch; its memory and median step time (the state is donated, so
    each call continues from the previous one's output, starting from a copy of the initial state)."""
    import jax
    import jax.numpy as jnp

    from headsup_jax.scaling.memory_plan import memory_fields
    from headsup_jax.train.sharding import global_batch
    from headsup_jax.train.step import TrainStep

    batch = global_batch(batch_np, experiment.mesh)
    step = TrainStep(experiment)
    t0 = time.perf_counter()
    compiled = step.lower(experiment.state, batch).compile()
    compile_s = time.perf_counter() - t0
    holder = [jax.tree.map(jnp.copy, experiment.state)]
    metrics = {}

    def call(state, b):
        new_state, m = compiled(state, b, step.supervision_state)
        holder[0] = new_state
        metrics.update(m)
        return new_state

    ms = time_ms(call, lambda: (holder[0], batch), runs)
    return {"ms": ms, "memory": memory_fields(compiled), "compile_s": compile_s,
            "dropped_pairs": int(metrics["dropped_pairs"]), "loss": float(metrics["loss"])}


# ----------------------------------------------------------------------------------------------------
# Stages, each forward + backward on its own.


def stage_times(experiment, batch_np, runs: int) -> dict:
    """ms of forward + backward (jax.vjp with a ones cotangent, gradients w.r.t. the stage's parameters and
    its differentiable inputs) of: encoder, compressor, decoder + anchoring, renderer, loss; and the
    optimizer update (clip + Adam on gradients shaped like the parameters)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from headsup_jax.train import losses
    from headsup_jax.train.objective import composite_on_background, render_views

    config = experiment.config
    b = jax.tree.map(jnp.asarray, batch_np)
    cams, tc = b["input_cameras"], b["target_cameras"]
    model = experiment.model(jax.tree.map(jnp.copy, experiment.state))
    ones = lambda tree: jax.tree.map(jnp.ones_like, tree)

    def fwd_bwd(f):
        """f(diff, *static) -> float outputs; returns a jitted (diff, *static) -> (outputs, cotangents)."""
        def g(diff, *static):
            out, vjp = jax.vjp(lambda d: f(d, *static), diff)
            return out, vjp(ones(out))
        return jax.jit(g)

    def run(f, diff, *static):
        compiled = fwd_bwd(f).lower(diff, *static).compile()
        ms = time_ms(compiled, lambda: (diff, *static), runs)
        return ms, compiled(diff, *static)[0]

    out = {}
    # encoder: gradients w.r.t. its parameters (the images need none)
    gd, p, rest = nnx.split(model.encoder, nnx.Param, ...)
    out["encoder"], tokens = run(lambda p, imgs, K, w: nnx.merge(gd, p, rest)(imgs, K, w), p,
                                 b["inputs"], cams["K"], cams["world_to_cam"])
    log(f"    encoder {out['encoder']:.1f} ms (tokens {tuple(tokens[0].shape)})")
    # compressor: parameters and tokens
    gd, p, rest = nnx.split(model.compressor, nnx.Param, ...)
    out["compressor"], z = run(lambda d: nnx.merge(gd, d[0], rest)(*d[1]), (p, tokens))  # tokens and their rays
    log(f"    compressor {out['compressor']:.1f} ms")
    # decoder + anchoring: decoder parameters and the latent
    gd, p, rest = nnx.split(model, nnx.All(nnx.Param, nnx.PathContains("decoder")), ...)

    def decode(d):
        m = nnx.merge(gd, d[0], rest)
        uv_map = m.decoder(d[1])
        gaussians, raw = m.head_gaussians(uv_map)
        return gaussians, uv_map, raw["offset"]

    out["decoder"], (gaussians, uv_map, offsets) = run(decode, (p, z))
    log(f"    decoder + anchoring {out['decoder']:.1f} ms")
    # renderer: all Gaussian attributes, every supervision view
    H, W = b["targets"].shape[2:4]
    background = jnp.asarray(config.loss.background, jnp.float32)

    def render(g):
        r = render_views(g, tc["K"], tc["world_to_cam"], H, W, background, config.render)
        return r.rgb, r.alpha

    out["renderer"], (rgb, alpha) = run(render, gaussians)
    log(f"    renderer {out['renderer']:.1f} ms")
    # loss (the terms of train/objective.py, masked supervision): renders, UV map and offsets
    mask = b["target_masks"].astype(jnp.float32)
    target = composite_on_background(b["targets"], mask, background)
    w = config.loss

    def loss(d):
        rgb, alpha, uv_map, offsets = d
        terms = {"l1": losses.l1_loss(rgb, target), "dssim": losses.dssim_loss(rgb, target),
                 "tv": losses.uv_tv_loss(uv_map, model.atlas.mask), "offset": losses.offset_loss(offsets),
                 "mask": losses.mask_l1_loss(alpha, mask)}
        return sum(getattr(w, k) * v for k, v in terms.items() if getattr(w, k))

    out["loss"], _ = run(loss, (rgb, alpha, uv_map, offsets))
    log(f"    loss {out['loss']:.1f} ms")
    # optimizer: global-norm clip + Adam, gradients = a copy of the parameters
    gd, state = nnx.split(nnx.merge(experiment.graphdef, jax.tree.map(jnp.copy, experiment.state)))

    def update(state, grads):
        model, optimizer = nnx.merge(gd, state)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    grads = jax.tree.map(jnp.copy, nnx.state(nnx.merge(gd, state)[0], nnx.Param))
    compiled = jax.jit(update).lower(state, grads).compile()
    out["optimizer"] = time_ms(compiled, lambda: (state, grads), runs)
    log(f"    optimizer {out['optimizer']:.1f} ms")
    return out


# ----------------------------------------------------------------------------------------------------
# Tables.


def experiment_for(size: str, batch: int | None = None):
    from headsup_jax.train.experiment import build_experiment

    config = get_config(size)
    if batch:
        config.data.batch_size = batch
    return build_experiment(config)


def views_table(size: str, views, batch: int | None, runs: int) -> dict:
    exp = experiment_for(size, batch)
    c = exp.config
    image, B = tuple(c.data.image_size), c.data.batch_size
    log(f"\n## {size}: step time vs input views ({image[0]}x{image[1]}, batch {B}, {c.data.num_targets} "
        f"supervision views, atlas {c.atlas_resolution}, G = {exp.atlas.count}, {c.compute_dtype})")
    results = {}
    for n in views:
        r = time_step(exp, make_batch(c, n, image, B), runs)
        results[n] = r
        log(f"  N={n}: {r['ms']:.1f} ms/step, memory {mib(r['memory']['total'])} MiB (temp "
            f"{mib(r['memory']['temp'])}), compile {r['compile_s']:.0f} s, dropped pairs {r['dropped_pairs']}")
    lines = [f"| {size} N | step ms (median of {runs}) | x N={views[0]} | memory MiB (temp+arg+out-alias) | temp MiB |",
             "|---:|---:|---:|---:|---:|"]
    base = results[views[0]]["ms"]
    for n, r in results.items():
        lines.append(f"| {n} | {r['ms']:.1f} | {r['ms'] / base:.2f} | {mib(r['memory']['total'])} | "
                     f"{mib(r['memory']['temp'])} |")
    verdict = ""
    if 8 in results and 16 in results:
        ratio = results[16]["ms"] / results[8]["ms"]
        verdict = (f"target ({size}, {image[0]}x{image[1]}, batch {B}): step time N=16 / N=8 = {ratio:.2f}x "
                   f"(<= {TARGET_RATIO}x) -> {'MET' if ratio <= TARGET_RATIO else 'MISSED'}")
    table = "\n".join(lines) + ("\n\n" + verdict if verdict else "")
    log("\n" + table)
    return {"table": table, "results": results, "experiment": exp}


def resolution_table(size: str, sizes, batch: int | None, runs: int, exp=None, reuse=None) -> str:
    """reuse: {(H, W): result} already measured with this experiment at its config's N and batch."""
    exp = exp or experiment_for(size, batch)
    c = exp.config
    n, B = c.data.num_inputs, c.data.batch_size
    log(f"\n## {size}: step time vs image size (N={n}, batch {B}, atlas {c.atlas_resolution} fixed)")
    results = {}
    for hw in sizes:
        r = (reuse or {}).get(hw) or time_step(exp, make_batch(c, n, hw, B), runs)
        results[hw] = r
        log(f"  {hw[0]}x{hw[1]}: {r['ms']:.1f} ms/step, memory {mib(r['memory']['total'])} MiB, dropped pairs "
            f"{r['dropped_pairs']}")
    base = results[sizes[0]]["ms"]
    lines = [f"| {size} image (HxW) | pixels x | step ms (median of {runs}) | time x | memory MiB | temp MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    p0 = sizes[0][0] * sizes[0][1]
    for hw, r in results.items():
        lines.append(f"| {hw[0]}x{hw[1]} | {hw[0] * hw[1] / p0:g} | {r['ms']:.1f} | {r['ms'] / base:.2f} | "
                     f"{mib(r['memory']['total'])} | {mib(r['memory']['temp'])} |")
    table = "\n".join(lines)
    log("\n" + table)
    return table


def stages_table(label: str, exp, views: int, runs: int, full_ms: float | None = None) -> str:
    c = exp.config
    image, B = tuple(c.data.image_size), c.data.batch_size
    batch = make_batch(c, views, image, B)
    log(f"\n## {label}: stages (N={views}, {image[0]}x{image[1]}, batch {B})")
    full = full_ms or time_step(exp, batch, runs)["ms"]
    st = stage_times(exp, batch, runs)
    total = sum(st.values())
    lines = [f"| {label} stage (fwd+bwd), N={views} | ms | % of sum |", "|---|---:|---:|"]
    names = {"decoder": "decoder + anchoring", "optimizer": "optimizer (clip + Adam)"}
    for k, v in st.items():
        lines.append(f"| {names.get(k, k)} | {v:.1f} | {100 * v / total:.1f} |")
    lines.append(f"| sum of stages | {total:.1f} | 100 |")
    lines.append(f"| full train step (one program) | {full:.1f} | {100 * full / total:.0f} |")
    table = "\n".join(lines)
    log("\n" + table)
    return table


# ----------------------------------------------------------------------------------------------------
# xl on 8 fake devices: the memory plan of `headsup plan-memory` (a subprocess with 8 fake CPU devices).


def xl_section(args) -> str:
    from headsup_jax.scaling.memory_plan import PlanError, format_plan, plan_memory
    from headsup_jax.train.config import CONFIG_FILE

    mesh = f"{args.xl_mesh}x1"
    log(f"\n## xl on {XL_DEVICES} fake CPU devices, mesh data x fsdp x tensor = {mesh}, batch {args.xl_batch} "
        f"(headsup_jax.scaling.memory_plan)")
    try:
        plan = plan_memory(f"{CONFIG_FILE}:xl", XL_DEVICES, mesh, args.xl_batch, ["template=procedural", *args.xl_set],
                           progress=lambda message, seconds: log(f"  {message} ({seconds:.0f} s)"))
    except PlanError as e:
        log(f"  {e}")
        return f"xl: the memory plan failed:\n\n```\n{e}\n```"
    table = format_plan(plan, MFU, chips=(1, XL_DEVICES, PAPER_BATCH), batch=PAPER_BATCH)
    log("\n" + table)
    return table


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, N = 2, 8, 16, two image sizes")
    parser.add_argument("--skip-xl", action="store_true", help="skip the 8-device xl compilation")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--s-batch", type=int, default=1, help="batch size of the s config's runs")
    parser.add_argument("--s-views", default="8,16", help="input view counts of the s config's runs")
    parser.add_argument("--xl-only", action="store_true", help="only the 8-device xl compilation")
    parser.add_argument("--cache-dir", default="/tmp/headsup_jax_compile_cache",
                        help="persistent XLA compilation cache ('' to disable)")
    parser.add_argument("--xl-batch", type=int, default=XL_DEVICES, help="global batch of the compiled xl step")
    parser.add_argument("--xl-mesh", default="1x8", help="data x fsdp of the xl mesh (tensor = 1)")
    parser.add_argument("--xl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an xl config value, e.g. render.tile_capacity=2048 (repeatable)")
    args = parser.parse_args()

    import jax

    if args.cache_dir:  # identical programs (e.g. on a rerun) compile once
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    log(f"jax {jax.__version__}, {jax.devices()[0].platform} x {len(jax.devices())}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f}; median of {args.runs} steps after 1 warm-up, compilation excluded; "
        f"memory = temp + argument + output - alias bytes of the compiled program (memory_analysis)")
    t_start = time.perf_counter()
    sections = []
    if args.xl_only:
        sections.append(xl_section(args))
    else:
        views = (2, 8, 16) if args.quick else (2, 4, 8, 16)
        tiny = views_table("tiny", views, None, args.runs)
        sections.append(tiny["table"])
        exp, res = tiny["experiment"], tiny["results"]
        sections.append(stages_table("tiny", exp, 16, args.runs, full_ms=res[16]["ms"]))
        sizes = ((64, 48), (128, 96)) if args.quick else ((64, 48), (128, 96), (256, 192))
        reuse = {tuple(exp.config.data.image_size): res[exp.config.data.num_inputs]} if (
            exp.config.data.num_inputs in res) else {}
        sections.append(resolution_table("tiny", sizes, None, args.runs, exp=exp, reuse=reuse))
        if not args.quick:
            s_views = tuple(int(v) for v in args.s_views.split(","))
            sections.append(views_table("s", s_views, args.s_batch, args.runs)["table"])
        if not (args.quick or args.skip_xl):
            sections.append(xl_section(args))
    log("\n# Summary tables\n\n" + "\n\n".join(sections))
    log(f"\nload average at the end: {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
