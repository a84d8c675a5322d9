"""Synthetic subjects in the capture format: template identity and expression, UV appearance, studio
lighting, a jittered camera rig, ground truth rendered by Embree (`raycast`). Subject k depends only on
(seed, k), so any subject of a large set can be regenerated alone.

    <out>/synth_000042/{cameras.json, images/, masks/, depth/, blendshapes.json}   (frames=1)
    <out>/synth_000042/<frame>/...                                                  (frames>1)
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import pathlib
import time

import numpy as np
from tqdm import tqdm

from headsup_jax.data.appearance import paint, texel_basis, uv_per_metre
from headsup_jax.geometry.features import anchor_points, feature_anchors
from headsup_jax.geometry.rig import canonical, template_channels
from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.data.capture import CameraSpec, write_capture
from headsup_jax.data.io import encode_png, write_json_atomic
from headsup_jax.data.raycast import Lighting, MeshRenderer, Surface
from headsup_jax.render.types import camera_centre

STAGES = ("paint", "mesh", "render", "encode", "write")  # per subject, in Generator.seconds
# Default texture resolution: the face gets this many texels per image pixel at the rig's median camera
# distance (1 per ray at 2 x 2 rays per pixel), so pores and freckles are at the detail the images can
# show and no finer: painting and its set-up cost grow with T^2.
TEXELS_PER_PIXEL = 2
KEY_LIGHTS = np.array([[0.6, 0.5, 0.8], [-0.6, 0.3, 0.8], [0.0, 0.9, 0.3], [0.0, 0.3, -1.0]])  # key, fill, top, rim


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    rig: str = "frontal16"
    resolution: int = 256
    seed: int = 0
    template: str = "procedural"
    frames: int = 1  # 1: neutral only; more: frame 0 neutral, then random sparse expressions
    texture_resolution: int | None = None  # UV texture height T; None: TEXELS_PER_PIXEL on the face
    supersample: int = 2
    jitter: bool = True  # per-subject calibration noise on the rig
    # template regions not rendered (ICT-FaceKit's transparent overlays), matched by name prefix
    hidden_regions: tuple = ("eye_occlusion", "eye_blend", "eyelashes", "lacrimal")


def subject_name(index: int) -> str:
    return f"synth_{index:06d}"


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """Diffuse studio lighting: four soft lights with random direction, intensity and colour temperature."""
    d = KEY_LIGHTS + rng.normal(0, 0.2, KEY_LIGHTS.shape)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    warmth = rng.uniform(-0.08, 0.08)
    tint = np.array([1 + warmth, 1.0, 1 - warmth])
    power = np.array([1.0, 0.5, 0.4, 0.3]) * rng.uniform(0.7, 1.3, 4) * rng.uniform(0.8, 1.2)
    return Lighting(d, power[:, None] * tint, rng.uniform(0.2, 0.4) * tint)


def sample_expression(template, rng: np.random.Generator) -> dict:
    """A sparse random expression: 1 to 3 of the ARKit blendshapes the template drives (by any spelling:
    eyeBlinkLeft drives ICT-FaceKit's eyeBlink_L), with weights in [0.3, 1], keyed by ARKit name."""
    channels = template_channels(template)
    names = [n for n in ARKIT_BLENDSHAPES if canonical(n) in channels]
    picks = rng.choice(len(names), min(len(names), int(rng.integers(1, 4))), replace=False)
    return {names[i]: float(rng.uniform(0.3, 1.0)) for i in sorted(picks)}


class _Stopwatch:
    """Adds the seconds since the previous call to seconds[stage]."""

    def __init__(self, seconds: collections.Counter):
        self.seconds, self.last = seconds, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self.last
        self.last = now


class Generator:
    """Holds the template and its texel basis (built once per process). `seconds` sums the wall time of
    each stage: set-up (template, basis), then per subject paint, mesh (rig, deform, normals, Embree
    scene), render (ray casting and shading), encode (PNG) and write."""

    def __init__(self, config: SynthConfig):
        from headsup_jax.geometry import load_template

        self.config = config
        self.seconds = collections.Counter()
        clock = _Stopwatch(self.seconds)
        self.template = load_template(config.template)
        clock("template")
        hidden = [idx for name, idx in self.template.regions.items() if name.startswith(config.hidden_regions)]
        shown = np.setdiff1d(np.arange(len(self.template.faces)), np.concatenate(hidden) if hidden else [])
        T = config.texture_resolution or self._texture_resolution(shown)
        self.basis = texel_basis(self.template, T, shown)  # only the rendered faces are laid out and painted
        clock("basis")

    def _texture_resolution(self, faces: np.ndarray) -> int:
        """T giving the face TEXELS_PER_PIXEL texels per pixel at the rig's median focal length / distance
        to the head (rounded up to a multiple of 8)."""
        from headsup_jax.geometry.rigs import TARGET, make_rig

        c = self.config
        cams = make_rig(c.rig, c.resolution, seed=c.seed)
        pixels_per_metre = np.median([float(np.asarray(cam.K)[1, 1]) / np.linalg.norm(
            camera_centre(np.asarray(cam.world_to_cam, np.float64)) - TARGET) for cam in cams])
        return int(8 * np.ceil(TEXELS_PER_PIXEL * pixels_per_metre / uv_per_metre(self.template, faces) / 8))

    def cameras(self, index: int) -> list:
        from headsup_jax.geometry.rigs import Jitter, make_rig

        c = self.config
        return make_rig(c.rig, c.resolution, seed=_seed(c.seed, index, 1), noise=Jitter() if c.jitter else None)

    def vertices(self, identity: np.ndarray, expression: dict) -> np.ndarray:
        from headsup_jax.geometry import deform, expression_coefficients

        expr = expression_coefficients(self.template, expression) if expression else None
        return np.asarray(deform(self.template, identity, expr), np.float64)  # [V, 3]

    def identity(self, index: int) -> np.ndarray | None:
        """Identity coefficients of subject `index`, ~ N(0, 1). [I]"""
        deltas = self.template.identity_deltas
        if deltas is None:
            return None
        return np.random.default_rng(_seed(self.config.seed, index, 2)).standard_normal(deltas.shape[0]).astype(np.float32)

    def landmarks(self, index: int, expression: dict | None = None) -> dict:
        """name -> 3D point (metres) of the face anchors (eyes, mouth) on subject `index`'s mesh."""
        return anchor_points(feature_anchors(self.template), self.vertices(self.identity(index), expression or {}))

    def subject(self, index: int, out: pathlib.Path) -> int:
        """Render and write subject `index`; returns the number of views written."""
        c, t = self.config, self.template
        clock = _Stopwatch(self.seconds)
        rng = np.random.default_rng(_seed(c.seed, index, 0))
        identity = self.identity(index)
        texture = paint(self.basis, rng)
        background = np.full(3, rng.uniform(0.25, 0.75)) * np.exp(rng.normal(0, 0.05, 3))
        clock("paint")
        cams = self.cameras(index)
        views = 0
        lighting = sample_lighting(rng)  # one studio for all frames: an expression frame differs only in shape
        for frame in range(c.frames):
            expression = sample_expression(t, rng) if frame else {}
            surface = Surface(self.vertices(identity, expression), t.faces[self.basis.faces], self.basis.corner_uvs,
                              texture)
            renderer = MeshRenderer(surface)
            clock("mesh")
            images, masks, depths, specs = {}, {}, {}, []
            for k, cam in enumerate(cams):
                cid = f"cam{k:02d}"
                rgb, mask, depth = renderer.render(cam, lighting, background, c.supersample)
                clock("render")
                images[cid] = encode_png(np.round(rgb * 255).astype(np.uint8))
                masks[cid] = encode_png(np.round(mask * 255).astype(np.uint8))
                depths[cid] = encode_png(np.round(np.clip(depth * 1000, 0, 65535)).astype(np.uint16))  # mm
                specs.append(CameraSpec(cid, np.asarray(cam.K), np.asarray(cam.world_to_cam), cam.width, cam.height))
                clock("encode")
            folder = out / subject_name(index) if c.frames == 1 else out / subject_name(index) / f"frame_{frame:02d}"
            write_capture(folder, specs, images, masks, expression, depths=depths)
            clock("write")
            views += len(cams)
        return views


def _seed(seed: int, index: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


_WORKER: Generator | None = None


def _init(config: SynthConfig) -> None:
    global _WORKER
    _WORKER = Generator(config)


def _run(args) -> int:
    index, out = args
    return _WORKER.subject(index, out)


def _done(out: pathlib.Path, index: int, frames: int) -> bool:
    folder = out / subject_name(index)
    return (folder / "cameras.json").exists() if frames == 1 else (folder / f"frame_{frames - 1:02d}" / "cameras.json").exists()


def generate(out, num_subjects: int, config: SynthConfig, workers: int = 1, start: int = 0,
             overwrite: bool = False, progress: bool = True) -> int:
    """Write subjects start..start+num_subjects-1 under `out` (finished ones are skipped unless `overwrite`).
    Returns the number of views rendered."""
    out = pathlib.Path(out)
    info = json.loads(json.dumps({**dataclasses.asdict(config), "subjects": start + num_subjects}))  # as stored
    if (out / "synth.json").exists():
        previous = json.loads((out / "synth.json").read_text())
        if {k: v for k, v in previous.items() if k != "subjects"} != {k: v for k, v in info.items() if k != "subjects"}:
            raise ValueError(f"{out / 'synth.json'}: {out} was generated with {previous}, not {info}")
        info["subjects"] = max(info["subjects"], previous["subjects"])
    write_json_atomic(out / "synth.json", info)
    todo = [(i, out) for i in range(start, start + num_subjects) if overwrite or not _done(out, i, config.frames)]
    bar = tqdm(total=len(todo), unit="subject", disable=not progress)
    views = 0
    if workers <= 1:
        _init(config)
        for job in todo:
            views += _run(job)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, ctx, initializer=_init, initargs=(config,)) as pool:
            for n in pool.map(_run, todo, chunksize=max(1, min(16, len(todo) // (4 * workers)))):
                views += n
                bar.update()
    bar.close()
    return views
