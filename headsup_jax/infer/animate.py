"""Animate a reconstructed head with expression blendshapes (`headsup animate`): Gaussians per frame.

    head = neutral_head(trained.template, trained.atlas, reconstruct(trained, "captures/alice").head)
    coeffs = read_animation("anim.csv", trained.template).coefficients      # [F, E]
    frames = animate(head, coeffs, method="rig")                            # Gaussians [F, G]

Every method is a function (NeutralHead, coefficients [F, E]) -> Gaussians [F, G] in `METHODS`.

rig: the template deformed by the coefficients (`geometry.deform`) carries each Gaussian as the model's
anchoring does (`geometry.anchor`): its offset and rotation stay fixed in the local surface frame of its
texel and its scales follow the texel's footprint; opacity and colour are unchanged. The neutral
Gaussians' local attributes are recovered against the neutral template's anchors (so a head from a PLY
file animates like one from the model), and a Gaussian whose triangle the coefficients do not move keeps
its neutral values: zero coefficients return the neutral arrays exactly.

latent: the paper's method: the head's latent Z (`NeutralHead.latent`, `capture_latent`) goes through a
trained expression model F(Z_neutral, b) (`model.expression`, `train.expression.load_expression`) and the
frozen base decoder; bind the loaded (ExpressionModel, base HeadsUp) with
functools.partial(animate_latent, expression=...). A head read from a PLY has no latent: refused.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.errors import InputError
from headsup_jax.geometry import HeadTemplate, UVAtlas, anchor, deform
from headsup_jax.geometry.anchor import quat_multiply
from headsup_jax.render.projection import quat_to_rotmat
from headsup_jax.render.types import Gaussians

CHUNK_FRAMES = 16  # frames per call of a method (one compile; padded with zero frames)
MAX_MEDIAN_OFFSET = 0.02  # metres: a head whose Gaussians sit farther from their anchors is not in atlas order


class HeadFileError(InputError):
    """A head (--head) that cannot be animated: names the file and why."""


class MethodUnavailableError(InputError):
    """An animation method that needs something this installation does not have yet."""


@dataclasses.dataclass(frozen=True)
class NeutralHead:
    """Neutral head Gaussians [G] (NumPy) in atlas order with the template and atlas they were predicted on."""

    template: HeadTemplate
    atlas: UVAtlas
    gaussians: Gaussians
    latent: np.ndarray | None = None  # [Lh, Lw, D] the model's Z of the head, which --method latent needs


def neutral_head(template, atlas, gaussians: Gaussians, source: str = "the head") -> NeutralHead:
    """Checks that `gaussians` are one head in the atlas order of `template` (a model's or a fit's head
    Gaussians, as `headsup reconstruct` and `headsup fit` write them) and wraps them for animation."""
    G = gaussians.means.shape[0]
    if G != atlas.count:
        raise HeadFileError(f"{source}: {G} Gaussians, but the template {template.name!r} at atlas resolution "
                            f"{atlas.resolution} has {atlas.count}: only the head Gaussians of that model "
                            "(as headsup reconstruct/fit write them, in atlas order) can be animated")
    rest = anchor(template.vertices, atlas)
    distance = np.linalg.norm(np.asarray(gaussians.means) - np.asarray(rest.means), axis=-1)  # [G]
    median = float(np.median(distance))
    if not median <= MAX_MEDIAN_OFFSET:
        raise HeadFileError(f"{source}: the Gaussians lie a median {100 * median:.1f} cm from their template anchors "
                            f"(at most {100 * MAX_MEDIAN_OFFSET:.0f} cm for a head in atlas order): reordered, "
                            f"moved or from another template than {template.name!r}")
    return NeutralHead(template, atlas, jax.tree.map(lambda x: np.asarray(x, np.float32), gaussians))


def animate_rig(head: NeutralHead, expression_coeffs) -> Gaussians:
    """The template rig: coefficients [F, E] (template.expression_names order) -> Gaussians [F, G]."""
    coeffs = jnp.asarray(expression_coeffs, jnp.float32)
    E = len(head.template.expression_names)
    if coeffs.ndim != 2 or coeffs.shape[1] != E:
        raise ValueError(f"expression_coeffs: shape {list(coeffs.shape)}, expected [F, {E}]")
    return _rig_function(head.template, head.atlas)(head.gaussians, coeffs)


def animate_latent(head: NeutralHead, expression_coeffs, expression=None) -> Gaussians:
    """The latent expression model: coefficients [F, E] -> Gaussians [F, G], the base decoder's Gaussians
    of F(Z_neutral, b). `expression`: (ExpressionModel, its base HeadsUp model), as
    `train.expression.load_expression` gives them; `head.latent` must be that base model's Z."""
    if expression is None:
        raise MethodUnavailableError("--method latent needs a trained expression model: --expression-workdir DIR "
                                     "(headsup train --config configs/expression.py:tiny)")
    if head.latent is None:
        raise HeadFileError("--method latent needs the head's latent Z, which a PLY file does not hold: give "
                            "--workdir and --capture (the head is reconstructed by the expression model's base)")
    coeffs = jnp.asarray(expression_coeffs, jnp.float32)
    E = len(head.template.expression_names)
    if coeffs.ndim != 2 or coeffs.shape[1] != E:
        raise ValueError(f"expression_coeffs: shape {list(coeffs.shape)}, expected [F, {E}]")
    return _latent_function(*expression)(jnp.asarray(head.latent), coeffs)


METHODS = {"rig": animate_rig, "latent": animate_latent}


def method_function(method: str):
    """The function (NeutralHead, coefficients [F, E]) -> Gaussians [F, G] of `method` (latent: bind its
    `expression` first, functools.partial)."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    return METHODS[method]


def animate(head: NeutralHead, expression_coeffs, method: str = "rig") -> Gaussians:
    """Gaussians [F, G] of `head` under coefficients [F, E] by `method` (a key of METHODS)."""
    return method_function(method)(head, expression_coeffs)


def animation_frames(head: NeutralHead, expression_coeffs, method=animate_rig, chunk: int = CHUNK_FRAMES):
    """Yields the Gaussians [G] (NumPy) of each frame of coefficients [F, E], `chunk` frames a call of
    `method` (a METHODS function), with a tqdm progress bar."""
    from tqdm import tqdm

    coeffs = np.asarray(expression_coeffs, np.float32)
    with tqdm(total=len(coeffs), desc="animate", unit="frame") as bar:
        for start in range(0, len(coeffs), chunk):
            part = coeffs[start:start + chunk]
            batch = jax.tree.map(np.asarray, method(head, np.pad(part, [(0, chunk - len(part)), (0, 0)])))
            for f in range(len(part)):
                yield jax.tree.map(lambda x: x[f], batch)
                bar.update()


def frame_cameras(name: str, resolution: int, frames: int) -> list:
    """One camera per frame: frontal16's most frontal camera (nearest +z seen from the head), fixed, or a
    turntable orbiting once over the frames (`infer.render.rig_cameras`)."""
    from headsup_jax.geometry.rigs import TARGET
    from headsup_jax.infer.render import rig_cameras
    from headsup_jax.render.types import camera_centre

    if name == "turntable":
        return rig_cameras(name, resolution, frames)
    if name != "frontal16":
        raise InputError(f"--cameras {name!r}: expected frontal16 or turntable")
    rig = rig_cameras(name, resolution)
    centres = camera_centre(np.stack([np.asarray(c.world_to_cam, np.float64) for c in rig])) - np.asarray(TARGET)
    front = int(np.argmax(centres[:, 2] / np.linalg.norm(centres, axis=-1)))
    return [rig[front]] * frames


def render_frames(frames, cameras, background=(1.0, 1.0, 1.0), backend: str = "auto", ply_folder=None):
    """Yields uint8 [H, W, 3] images of each frame's Gaussians [G] in its camera; with `ply_folder`, also
    writes each frame to ply_folder/frame_00000.ply, ... (atomically)."""
    from headsup_jax.export.ply import save_ply
    from headsup_jax.infer.render import image_renderer, to_uint8

    render = image_renderer(background, backend)
    if ply_folder is not None:
        pathlib.Path(ply_folder).mkdir(parents=True, exist_ok=True)
    for f, (gaussians, camera) in enumerate(zip(frames, cameras)):
        if ply_folder is not None:
            save_ply(gaussians, pathlib.Path(ply_folder) / f"frame_{f:05d}.ply")
        yield to_uint8(render(gaussians, camera))


def capture_latent(trained, capture, views=None, num_views: int | None = None) -> np.ndarray:
    """The model's Z [Lh, Lw, D] of a capture from the views `infer.reconstruct.reconstruct` picks."""
    from headsup_jax.infer.reconstruct import load_views, pick_views, stack_views

    indices = pick_views(capture, views, num_views or min(trained.config.data.num_inputs, len(capture.cameras)))
    images, K, w2c = stack_views(load_views(capture, indices, *trained.image_size))
    return np.asarray(trained.model.latent(images[None], K[None], w2c[None])[0])


@functools.lru_cache(maxsize=2)
def _latent_function(expression_model, base_model):
    """jit((Z_neutral [Lh, Lw, D], coefficients [F, E]) -> Gaussians [F, G]) of one expression model."""
    from flax import nnx

    expression_def, expression_state = nnx.split(expression_model)
    base_def, base_state = nnx.split(base_model)

    def run(es, bs, z, coeffs):
        expression, base = nnx.merge(expression_def, es), nnx.merge(base_def, bs)
        z_expression = expression(jnp.broadcast_to(z, (coeffs.shape[0],) + z.shape), coeffs)  # [F, Lh, Lw, D]
        return base.head_gaussians(base.decoder(z_expression))[0]

    jitted = jax.jit(run)
    return lambda z, coeffs: jitted(expression_state, base_state, z, coeffs)


@functools.lru_cache(maxsize=4)
def _rig_function(template, atlas):
    """jit((neutral Gaussians [G], coefficients [F, E]) -> Gaussians [F, G]) for one template and atlas."""

    def anchors(vertices):  # the anchoring of zero predictions: points, frames (as quats), footprint scales
        rest = anchor(vertices, atlas)
        return rest.means, rest.quats, rest.scales

    def run(neutral: Gaussians, coeffs):
        vertices = jnp.concatenate([deform(template)[None], jax.vmap(lambda c: deform(template, None, c))(coeffs)])
        point, frame_q, extent = jax.vmap(anchors)(vertices)  # [1 + F, G, 3], [1 + F, G, 4], [1 + F, G, 3]
        frame = quat_to_rotmat(frame_q)  # [1 + F, G, 3, 3]
        offset = jnp.einsum("gji,gj->gi", frame[0], neutral.means - point[0])  # [G, 3] local frame
        local = quat_multiply(frame_q[0] * jnp.array([1.0, -1.0, -1.0, -1.0]), neutral.quats)  # [G, 4]
        F = coeffs.shape[0]
        vid = atlas.binding()[0]  # [G, 3] each Gaussian's triangle
        moved = jnp.any(vertices[1:][:, vid] != vertices[0][vid], axis=(-1, -2))  # [F, G]
        keep = lambda animated, still: jnp.where(moved.reshape(moved.shape + (1,) * (still.ndim - 1)),  # noqa: E731
                                                 animated, still)
        return Gaussians(
            means=keep(point[1:] + jnp.einsum("fgij,gj->fgi", frame[1:], offset), neutral.means),
            quats=keep(quat_multiply(frame_q[1:], local), neutral.quats),
            scales=keep(neutral.scales * (extent[1:] / extent[0]), neutral.scales),
            opacities=jnp.broadcast_to(neutral.opacities, (F,) + neutral.opacities.shape),
            sh=jnp.broadcast_to(neutral.sh, (F,) + neutral.sh.shape))

    return jax.jit(run)
