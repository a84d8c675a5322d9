"""Animation fidelity on held-out identities with expression frames (issue 13), as markdown tables.

    python benchmarks/animation.py --workdir outputs/demo --expression-workdir runs/expr \
        [--subjects 8] [--frames 4] [--targets 4] [--sheet docs/animation/contact_sheet.png]

Data: synthetic subjects the base run never saw, indices config.data.synthetic_subjects + k (past its
dataset), generated at its template, rig, resolution and seed, each with a neutral frame_00 and --frames
random sparse expressions (`data.synth`). Views: the run's N input cameras (`pick_views`, what
`headsup reconstruct` picks; the same cameras in every frame) and --targets novel views, the next cameras
the same farthest-point sampling picks, so disjoint from the inputs.

Methods, each rendered in the target views of every expression frame:
  neutral  the reconstruction from frame_00's input views, unanimated;
  rig      that head animated by the frame's true coefficients (`animate_rig`);
  latent   the same through the latent expression model (`animate_latent`);
  direct   a reconstruction from the expression frame's own input views (the upper reference);
and a reference that needs no model, "frame_00 truth": the neutral frame's ground-truth images of the same
views, what a perfect unanimated head would score (a subject keeps one light in all its frames, so this
differs from the truth only where the expression moves the surface).

Metrics: PSNR and SSIM (`train.metrics`), renders and targets composited on the base run's loss background
as the eval protocol does, over the whole frame, the head region (`eval.metrics.head_region`: the target's
mask dilated) and two feature regions. A feature region comes from the template's 68 landmarks (eyes
36-41 and 42-47, mouth 48-67) on the frame's true geometry (`geometry.deform` with the subject's identity
and the frame's coefficients) projected into the target view: the box of pixel indices spanned by a
group's landmarks, grown by round(REGION_MARGIN x image height) pixels (at least 1) on every side and
clipped to the image; the eye region is the union of the two eyes' boxes. Boxes ignore occlusion (a far
eye's box in a side view covers the nose in front of it); a group with a landmark behind the camera has
no box. A view where a region is empty is left out of that region's means. PSNR is capped at PSNR_CAP (a
region the expression leaves untouched is identical in frame_00's images: infinite PSNR). Means are over
subjects x expression frames x target views; the per-frame table lists every frame, and a second table
keeps only the frames that move the region (a landmark of its group moves more than MOVED from neutral:
the farthest, so a one-sided blink counts).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("neutral", "rig", "latent", "direct")
ROWS = METHODS + ("frame_00 truth",)  # and a reference: the neutral frame's own images, unanimated
REGIONS = ("whole", "head", "mouth", "eyes")
LANDMARK_GROUPS = {"mouth": (range(48, 68),), "eyes": (range(36, 42), range(42, 48))}  # 68-point indices
REGION_MARGIN = 0.03  # x image height: pixels the landmarks' box grows by on each side (2 px at 64)
MOVED = 0.002  # metres: a frame moves a region when one of its landmarks moves farther than this from neutral
PSNR_CAP = 60.0  # dB: per image and region, so identical pixels do not make a mean infinite


def project_pixels(points, K, world_to_cam) -> tuple[np.ndarray, np.ndarray]:
    """World points [L, 3] -> continuous pixel coordinates (x, y) [L, 2] (centres at +0.5) and depths [L]."""
    w2c = np.asarray(world_to_cam, np.float64)
    p = np.asarray(points, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]  # [L, 3] camera frame
    uvw = p @ np.asarray(K, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[:, :2] / uvw[:, 2:], p[:, 2]


def box_mask(pixels, height: int, width: int, margin: int) -> np.ndarray:
    """{0, 1} [H, W]: the pixels whose indices lie in the box spanned by `pixels` [L, 2] (x, y) grown by
    `margin` pixels on every side (clipped to the image)."""
    col, row = np.floor(np.asarray(pixels, np.float64)).T
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    inside = ((ys >= row.min() - margin) & (ys <= row.max() + margin)
              & (xs >= col.min() - margin) & (xs <= col.max() + margin))
    return inside.astype(np.float32)


def region_masks(landmarks, vertices, K, world_to_cam, height: int, width: int) -> dict:
    """region -> {0, 1} [H, W] of LANDMARK_GROUPS: template landmarks [68] (vertex indices) on `vertices`
    [V, 3], seen by one camera."""
    margin = max(1, round(REGION_MARGIN * height))
    out = {}
    for name, groups in LANDMARK_GROUPS.items():
        mask = np.zeros((height, width), np.float32)
        for group in groups:
            pixels, depth = project_pixels(np.asarray(vertices)[np.asarray(landmarks)[list(group)]], K, world_to_cam)
            if np.all(depth > 0):
                mask = np.maximum(mask, box_mask(pixels, height, width, margin))
        out[name] = mask
    return out


def landmark_motion(landmarks, neutral, vertices) -> dict:
    """region -> the farthest distance (metres) one of its landmarks moves between two vertex sets [V, 3]."""
    lm = np.asarray(landmarks)
    move = np.linalg.norm(np.asarray(vertices) - np.asarray(neutral), axis=-1)  # [V]
    return {name: float(np.max(move[lm[np.concatenate([list(g) for g in groups])]]))
            for name, groups in LANDMARK_GROUPS.items()}


def held_out_generator(config, out: pathlib.Path, subjects: int, frames: int):
    """Writes `subjects` held-out subjects (neutral + `frames` expressions) of the run's synthetic data
    under `out`; returns their Generator (identities, geometry)."""
    from headsup_jax.data.synth import Generator, SynthConfig, generate
    from headsup_jax.train.workdir import resolve_template

    d = config.data
    synth = SynthConfig(rig=d.rig, resolution=max(d.image_size[0], 64), seed=config.seed, frames=frames + 1,
                        template=resolve_template(config).template)
    generate(out, subjects, synth, start=d.synthetic_subjects)  # past the run's dataset: never trained on
    return Generator(synth)


def model_functions(trained):
    """jitted encode (views [B, N, ...] -> Z [B, Lh, Lw, D]), decode (Z -> head Gaussians [B, G]) and
    render (Gaussians [B, G], K [B, M, 3, 3], world_to_cam [B, M, 4, 4] -> rgb [B, M, H, W, 3])."""
    from flax import nnx

    from headsup_jax.train.objective import render_views

    graphdef, state = nnx.split(trained.model)
    H, W = trained.image_size
    background = jnp.asarray(trained.config.loss.background, jnp.float32)

    def decode(s, z):
        model = nnx.merge(graphdef, s)
        return model.head_gaussians(model.decoder(z))[0]

    encode = jax.jit(lambda s, images, K, w2c: nnx.merge(graphdef, s).latent(images, K, w2c))
    decode = jax.jit(decode)
    render = jax.jit(lambda g, K, w2c: render_views(g, K, w2c, H, W, background, trained.config.render).rgb)
    return (lambda images, K, w2c: encode(state, images, K, w2c)), (lambda z: decode(state, z)), render


def method_gaussians(trained, expression, decoded, z, coeffs):
    """Gaussians [4F, G] of METHODS (in order) for coefficients [F, E], from the decoded heads [1 + F, G]
    of the latents z [1 + F, Lh, Lw, D] (neutral first). `expression`: (ExpressionModel, base HeadsUp)."""
    import dataclasses

    from headsup_jax.infer.animate import animate_latent, animate_rig, neutral_head

    head = neutral_head(trained.template, trained.atlas, jax.tree.map(lambda x: x[0], decoded))
    head = dataclasses.replace(head, latent=z[0])
    F = len(coeffs)
    methods = {"neutral": jax.tree.map(lambda x: np.broadcast_to(x, (F,) + x.shape), head.gaussians),
               "rig": animate_rig(head, coeffs), "latent": animate_latent(head, coeffs, expression=expression),
               "direct": jax.tree.map(lambda x: x[1:], decoded)}
    return jax.tree.map(lambda *x: jnp.concatenate(x), *(methods[m] for m in METHODS))


def frame_regions(generator, index: int, frames, K, world_to_cam, height: int, width: int):
    """region -> [F, T, H, W] masks on the true geometry of subject `index`'s expression frames (captures),
    target cameras K [F, T, 3, 3], world_to_cam [F, T, 4, 4]; and each frame's landmark motions."""
    identity = generator.identity(index)
    neutral = generator.vertices(identity, {})
    lm = generator.template.landmarks
    regions = {name: np.zeros(K.shape[:2] + (height, width), np.float32) for name in LANDMARK_GROUPS}
    motion = []
    for f, capture in enumerate(frames):
        vertices = generator.vertices(identity, capture.blendshapes or {})
        motion.append(landmark_motion(lm, neutral, vertices))
        for t in range(K.shape[1]):
            for name, mask in region_masks(lm, vertices, K[f, t], world_to_cam[f, t], height, width).items():
                regions[name][f, t] = mask
    return regions, motion


def evaluate_subject(trained, expression, functions, generator, index: int, frames, targets: int) -> dict:
    """Subject `index`'s frames (loaded captures, frame_00 first) -> metrics [5, F, T] per (metric, region)
    of ROWS, region masks [F, T, H, W], landmark motions, renders [4, F, T, H, W, 3] of METHODS, targets
    [F, T, H, W, 3] and the
    most frontal target view. `expression`: (ExpressionModel, base HeadsUp)."""
    from headsup_jax.eval.metrics import fidelity_metrics
    from headsup_jax.geometry import expression_coefficients
    from headsup_jax.geometry.rigs import TARGET
    from headsup_jax.infer.reconstruct import load_views, pick_views, stack_views
    from headsup_jax.render.types import camera_centre
    from headsup_jax.train.metrics import psnr, ssim
    from headsup_jax.train.objective import composite_on_background

    encode, decode, render = functions
    H, W = trained.image_size
    N = trained.config.data.num_inputs
    picked = pick_views(frames[0], num_views=N + targets)  # the inputs reconstruct picks, then novel views
    images, K, w2c = (np.stack(x) for x in zip(*(stack_views(load_views(c, picked[:N], H, W)) for c in frames)))
    z = np.asarray(encode(images, K, w2c))  # [1 + F, Lh, Lw, D]
    coeffs = np.stack([expression_coefficients(trained.template, c.blendshapes or {}) for c in frames[1:]])  # [F, E]
    gaussians = method_gaussians(trained, expression, jax.tree.map(np.asarray, decode(z)), z, coeffs)  # [4F, G]

    views = [load_views(c, picked[N:], H, W) for c in frames]  # frame_00 first
    tK = np.stack([[np.asarray(v.camera.K) for v in vs] for vs in views[1:]])  # [F, T, 3, 3]
    tw = np.stack([[np.asarray(v.camera.world_to_cam) for v in vs] for vs in views[1:]])  # [F, T, 4, 4]
    masks = np.stack([[v.mask for v in vs] for vs in views])  # [1 + F, T, H, W]
    background = np.asarray(trained.config.loss.background, np.float32)
    truths = np.asarray(composite_on_background(np.stack([[v.image for v in vs] for vs in views]), masks, background))
    target, masks = truths[1:], masks[1:]
    rgb = np.asarray(render(gaussians, np.tile(tK, (4, 1, 1, 1)), np.tile(tw, (4, 1, 1, 1))))
    rgb = rgb.reshape((4, len(coeffs)) + rgb.shape[1:])  # [4, F, T, H, W, 3]
    compared = np.concatenate([rgb, np.broadcast_to(truths[:1], target.shape)[None]])  # [5, F, T, H, W, 3] ROWS

    regions, motion = frame_regions(generator, index, frames[1:], tK, tw, H, W)
    truth = np.broadcast_to(target, compared.shape)  # SSIM: the same shapes
    masks = np.broadcast_to(masks, compared.shape[:-1])
    scores = {k: np.asarray(v) for k, v in fidelity_metrics(compared, truth, masks).items()}
    metrics = {("psnr", "whole"): scores["psnr"], ("ssim", "whole"): scores["ssim"],
               ("psnr", "head"): scores["psnr_head"], ("ssim", "head"): scores["ssim_head"]}
    for name, region in regions.items():
        region = np.broadcast_to(region, masks.shape)
        metrics["psnr", name] = np.asarray(psnr(compared, truth, region))
        metrics["ssim", name] = np.asarray(ssim(compared, truth, region))
    metrics = cap_psnr(metrics)
    centres = camera_centre(tw[0].astype(np.float64)) - np.asarray(TARGET)  # [T, 3] seen from the head
    return {"metrics": metrics, "regions": regions, "motion": motion, "renders": rgb, "targets": target,
            "frontal": int(np.argmax(centres[:, 2] / np.linalg.norm(centres, axis=-1))),
            "blendshapes": [c.blendshapes or {} for c in frames[1:]],
            "names": [f"{c.subject}/{c.frame}" for c in frames[1:]]}


def cap_psnr(metrics: dict) -> dict:
    """{(metric, region): [5, F, T]} with every PSNR at most PSNR_CAP (SSIM untouched)."""
    return {k: np.minimum(v, PSNR_CAP) if k[0] == "psnr" else v for k, v in metrics.items()}


def valid(results, region: str) -> np.ndarray:
    """[S, F, T] bool: the views whose `region` has pixels."""
    if region in ("whole", "head"):
        return np.ones(np.shape(stacked(results, "psnr", "whole"))[1:], bool)
    return np.stack([r["regions"][region].sum((-2, -1)) > 0 for r in results])


def stacked(results, metric: str, region: str) -> np.ndarray:
    return np.stack([r["metrics"][metric, region] for r in results], 1)  # [5, S, F, T]


def main_table(results) -> str:
    head = "| method | " + " | ".join(f"PSNR {r} | SSIM {r}" for r in REGIONS) + " |"
    lines = [head, "|---" * (1 + 2 * len(REGIONS)) + "|"]
    for m, method in enumerate(ROWS):
        cells = [f"{stacked(results, k, r)[m][valid(results, r)].mean():.{2 if k == 'psnr' else 4}f}"
                 for r in REGIONS for k in ("psnr", "ssim")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def moving_table(results) -> str:
    """The feature regions over only the frames whose landmarks of that region move."""
    lines = ["| method | " + " | ".join(f"PSNR {r} | SSIM {r}" for r in LANDMARK_GROUPS) + " |",
             "|---" * (1 + 2 * len(LANDMARK_GROUPS)) + "|"]
    keep = {r: valid(results, r) & np.array([[m[r] > MOVED for m in x["motion"]] for x in results])[..., None]
            for r in LANDMARK_GROUPS}
    for m, method in enumerate(ROWS):
        cells = [f"{stacked(results, k, r)[m][keep[r]].mean():.{2 if k == 'psnr' else 4}f}" if keep[r].any() else "-"
                 for r in LANDMARK_GROUPS for k in ("psnr", "ssim")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{r}: {int(keep[r].any(-1).sum())} frames ({int(keep[r].sum())} views)" for r in keep)
    return "\n".join(lines) + f"\n\nFrames whose landmarks move more than {1000 * MOVED:.0f} mm: {counts}."


def frame_table(results) -> str:
    short = "/".join(m[0] for m in ROWS)
    lines = [f"| frame | expression | moves (mm, farthest landmark) mouth / eyes | PSNR mouth {short} | PSNR eyes {short} |",
             "|---|---|---|---|---|"]
    for r in results:
        for f, name in enumerate(r["names"]):
            expression = ", ".join(f"{k} {v:.2f}" for k, v in r["blendshapes"][f].items())
            cells = []
            for region in LANDMARK_GROUPS:
                ok = r["regions"][region][f].sum((-2, -1)) > 0  # [T]
                values = r["metrics"]["psnr", region][:, f][:, ok]  # [5, T']
                cells.append(" / ".join(f"{v:.1f}" for v in values.mean(-1)) if ok.any() else "-")
            lines.append(f"| {name} | {expression} | {1000 * r['motion'][f]['mouth']:.1f} / {1000 * r['motion'][f]['eyes']:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def count_line(results, targets: int) -> str:
    S, F = len(results), len(results[0]["names"])
    parts = []
    for region in LANDMARK_GROUPS:
        pixels = np.stack([r["regions"][region].sum((-2, -1)) for r in results])  # [S, F, T]
        parts.append(f"{region} region in {int((pixels > 0).sum())} of them ({pixels[pixels > 0].mean():.0f} px "
                     "on average)")
    return (f"{S} subjects x {F} expression frames x {targets} target views = {S * F * targets} images; "
            + "; ".join(parts))


def contact_sheet(result, path, scale: int | None = None) -> None:
    """One subject: rows expression frames, columns ground truth (feature regions outlined: mouth red, eyes
    blue), neutral, rig, latent, direct, in its most frontal target view."""
    from PIL import Image, ImageDraw, ImageFont

    renders, target = result["renders"], result["targets"]  # [4, F, T, H, W, 3], [F, T, H, W, 3]
    F, T, H, W = target.shape[:4]
    t = result["frontal"]
    scale = scale or max(1, math.ceil(256 / H))
    label_w, head_h = 200, 24
    sheet = Image.new("RGB", (label_w + 5 * W * scale, head_h + F * H * scale), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(14)
    for c, title in enumerate(("ground truth",) + METHODS):
        draw.text((label_w + c * W * scale + 4, 4), title, fill="black", font=font)
    for f in range(F):
        y = head_h + f * H * scale
        lines = [f"{k} {v:.2f}" for k, v in result["blendshapes"][f].items()]
        draw.multiline_text((4, y + 4), "\n".join([result["names"][f]] + lines), fill="black", font=font)
        cells = [target[f, t]] + [renders[m, f, t] for m in range(4)]
        for c, image in enumerate(cells):
            big = np.repeat(np.repeat(np.clip(image, 0, 1), scale, 0), scale, 1)
            if c == 0:
                for region, colour in (("mouth", (1, 0, 0)), ("eyes", (0, 0.4, 1))):
                    mask = np.repeat(np.repeat(result["regions"][region][f, t] > 0, scale, 0), scale, 1)
                    pad = np.pad(mask, 1)
                    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
                    big = np.where((mask & ~inner)[..., None], colour, big)
            sheet.paste(Image.fromarray((big * 255).round().astype(np.uint8)), (label_w + c * W * scale, y))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def run(args) -> str:
    from etils import epath
    from tqdm import tqdm

    from headsup_jax.data.capture import load_capture
    from headsup_jax.errors import InputError
    from headsup_jax.infer.trained import load_trained
    from headsup_jax.train.expression import load_expression, subject_frames

    trained = load_trained(args.workdir)
    model, expression_config, _ = load_expression(args.expression_workdir, trained=trained)
    if epath.Path(expression_config.base).resolve() != epath.Path(args.workdir).resolve():
        raise InputError(f"--expression-workdir {args.expression_workdir}: trained on the base run "
                         f"{expression_config.base}, not --workdir {args.workdir}")
    if trained.template.landmarks is None or len(trained.template.landmarks) != 68:
        raise InputError(f"template {trained.template.name!r}: the mouth and eye regions need its 68 landmarks")
    functions = model_functions(trained)
    results = []
    with tempfile.TemporaryDirectory(prefix="headsup_animation_") as tmp:
        generator = held_out_generator(trained.config, pathlib.Path(tmp), args.subjects, args.frames)
        for subject, frames in tqdm(subject_frames(tmp).items(), desc="evaluate", unit="subject"):
            captures = [load_capture(folder, subject, frame) for frame, folder in frames]
            results.append(evaluate_subject(trained, (model, trained.model), functions, generator,
                                            int(subject.rsplit("_", 1)[1]), captures, args.targets))
    if args.sheet:
        contact_sheet(results[0], args.sheet)
    start = trained.config.data.synthetic_subjects
    settings = {"base": str(args.workdir), "base_step": trained.step, "expression": str(args.expression_workdir),
                "input_views": trained.config.data.num_inputs, "image_size": list(trained.image_size),
                "held_out_subjects": f"{start}..{start + args.subjects - 1}"}
    return "\n\n".join([f"Settings: `{json.dumps(settings)}`", main_table(results), count_line(results, args.targets),
                        "Only the frames that move each region:", moving_table(results), "Per frame (mean over the "
                        "target views where the region is seen; rows neutral/rig/latent/direct/frame_00 truth):",
                        frame_table(results)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="the base HeadsUp run (synthetic data)")
    ap.add_argument("--expression-workdir", required=True, help="a latent expression model run on that base")
    ap.add_argument("--subjects", type=int, default=8, help="held-out subjects")
    ap.add_argument("--frames", type=int, default=4, help="expression frames per subject (besides the neutral)")
    ap.add_argument("--targets", type=int, default=4, help="novel target views per frame")
    ap.add_argument("--sheet", help="contact sheet PNG of the first subject")
    print(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
