"""`--method masks`: the similarity that makes the template's silhouette match the capture's masks.

The template's anchored Gaussians (`geometry.anchor`, zero attributes: opaque surfels tiling the
surface) are rendered with our differentiable renderer in every view; the loss is the mean squared
difference of the rendered alpha and the mask. Nothing assumes the head is near the capture's origin:

1. normalise: the rig's look-at centre c (the point closest to all optical axes, least squares) goes
   to the template's aim point and the rig is scaled to a typical head rig's size (median camera
   distance RIG_RADIUS);
2. coarse: Adam on (rotation vector, log-scale, translation) from each of the 24 rotations of the
   cube (spread over SO(3), at most 62.8 degrees from any rotation) at once, masks at `coarse_height` px;
3. fine: the `refine_starts` best starts (a head turned front-to-back has a similar coarse silhouette
   from a frontal rig), masks at `fine_height` px, Gaussians set `inset` inward; the lowest loss wins;
   then optionally the template's identity coefficients too (N(0, 1) prior).

Splats centred on the surface draw a silhouette larger than the mesh's (their tails reach past the
outline, most at the grazing rim and at open boundaries such as ICT-FaceKit's neck cut), which biases the
fitted scale low, and where they are wrong moves the loss's minimum off the true pose. So each splat is
moved inward (along the normal, and along the surface away from an open boundary for the splats nearer
to it than that: `open_boundary`) and its tangent scales shrunk by its own amount, fitted once per
template, atlas and mask height so that the splat silhouettes equal the template's ray-cast mesh
(`data.raycast.mesh_coverage`) in 24 random views (`calibrate_splats`, from the one inset at which the
areas match over the frontal16 rig: `calibrated_inset`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from headsup_jax.data.io import decode_image
from headsup_jax.errors import InputError
from headsup_jax.geometry.rigs import TARGET
from headsup_jax.limits import check_file_size

RIG_RADIUS = 1.0  # metres: median camera distance of a typical head rig (frontal16 1.0, dome80 1.2)
_TRANSLATION_UNIT = 0.1  # metres per unit of the translation parameters (Adam steps ~ lr of a unit)


@dataclasses.dataclass(frozen=True)
class MaskFitSettings:
    template: str = "procedural"
    atlas_resolution: int = 32
    coarse_height: int = 16  # mask height (px) of the multi-start stage
    fine_height: int = 64  # of the refinement (at most the captured height)
    coarse_steps: int = 15
    fine_steps: int = 80
    coarse_stride: int = 4  # every 4th Gaussian, wider, in the multi-start stage
    fine_stride: int = 1
    refine_starts: int = 3  # the best coarse starts refined
    inset: float | None = None  # tangent standard deviations; None: the per-splat `calibrate` at fine_height
    eps2d: float = 0.01  # px^2 added to each splat's 2D covariance (the renderer's 0.3 low-pass filter
    #                      piles up at the rim into a ~1 px halo at any atlas size: 19 % more area at 64 px)
    identity_steps: int = 0  # then with the identity coefficients (templates that have them)
    identity_prior: float = 1e-4  # weight of mean(coefficients^2) against the mask loss
    lr: float = 0.03


def cube_rotations() -> np.ndarray:
    """The 24 rotations of the cube: signed permutation matrices with det +1. [24, 3, 3]"""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return np.stack(out)


def look_at_centre(world_to_cam) -> np.ndarray:
    """The point closest (least squares) to every camera's optical axis. world_to_cam [V, 4, 4] -> [3]"""
    w2c = np.asarray(world_to_cam, np.float64)
    d = w2c[:, 2, :3]  # [V, 3] viewing directions (camera z in world)
    centres = -np.einsum("vji,vj->vi", w2c[:, :3, :3], w2c[:, :3, 3])
    P = np.eye(3) - d[:, :, None] * d[:, None, :]  # [V, 3, 3] projectors orthogonal to each axis
    A = P.sum(0)
    if np.linalg.cond(A) > 1e8:
        raise InputError("alignment: the cameras' optical axes are (nearly) parallel; no look-at centre")
    return np.linalg.solve(A, np.einsum("vij,vj->i", P, centres))


def load_masks(capture, height: int):
    """The capture's masks box-downsampled to `height` rows (width by the first camera's aspect) and K
    scaled to match. -> masks [V, h, w] in [0, 1], K [V, 3, 3]"""
    if capture.mask_files is None:
        raise InputError(f"file {capture.path / 'masks'}, field folder: alignment --method masks needs the "
                         "capture's masks (masks/<id>.png); use --method manual --pose otherwise")
    first = capture.cameras[0]
    h = min(int(height), first.height)
    w = max(1, int(round(first.width * h / first.height)))
    masks, Ks = [], []
    for cam in capture.cameras:
        path = capture.mask_files[cam.id]
        im = Image.fromarray(decode_image(check_file_size(path).read_bytes(), "L", path))
        masks.append(np.asarray(im.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0)
        Ks.append(np.diag([w / cam.width, h / cam.height, 1.0]) @ np.asarray(cam.K, np.float64))
    return np.stack(masks), np.stack(Ks)


def silhouette(gaussians, camera, eps2d: float = 0.3):
    """The renderer's accumulated opacity 1 - prod(1 - alpha_i) at every pixel centre. [H, W]

    Accumulated opacity does not depend on the depth order, so a silhouette needs no sorting or tiles:
    the Gaussians are projected by `render.project` and evaluated densely with the compositor's alpha
    rules (equal to `rasterize`'s alpha but for its early stop at transmittance 1e-4); at a few
    thousand pixels this is cheaper than binning."""
    from headsup_jax.render import project
    from headsup_jax.render.composite import CompositingRules, gaussian_alpha

    rules = CompositingRules()
    proj = project(gaussians, camera, eps2d=eps2d, alpha_min=rules.min_alpha)
    opacity = jnp.where(proj.visible, gaussians.opacities, 0.0)
    H, W = camera.height, camera.width
    py, px = (a.reshape(1, -1) + 0.5 for a in jnp.meshgrid(jnp.arange(H), jnp.arange(W), indexing="ij"))
    rows = [proj.means2d[:, :1], proj.means2d[:, 1:], proj.conics[:, :1], proj.conics[:, 1:2], proj.conics[:, 2:],
            opacity[:, None]]
    alpha, _, _, _ = gaussian_alpha(rows, px, py, rules)  # [G, H * W]
    return (1.0 - jnp.exp(jnp.sum(jnp.log1p(-alpha), 0))).reshape(H, W)


def calibrated_inset(template, atlas, height: int, eps2d: float, iterations: int = 12, fitter=None) -> float:
    """The inset (tangent standard deviations, in [0, 4]) at which the template's splats cover as many pixels
    as its mesh (the atlas's faces, ray-cast) over the frontal16 rig at `height` px, by bisection (the
    covered area shrinks as the inset grows)."""
    from headsup_jax.data.raycast import mesh_coverage
    from headsup_jax.geometry.rigs import make_rig
    from headsup_jax.render import Camera

    rig = make_rig("frontal16", height)
    target = mesh_coverage(template.vertices, template.faces[atlas.faces], rig).sum()
    cams = (jnp.asarray(np.stack([c.K for c in rig]), jnp.float32),
            jnp.asarray(np.stack([c.world_to_cam for c in rig]), jnp.float32))
    H, W = rig[0].height, rig[0].width
    fitter = MaskFitter(template, MaskFitSettings(eps2d=eps2d), atlas=atlas) if fitter is None else fitter

    @jax.jit
    def area(inset):
        g = fitter._gaussians(None, 1, inset)
        view = lambda km: silhouette(g, Camera(world_to_cam=km[1], K=km[0], width=W, height=H), eps2d)  # noqa: E731
        return jnp.sum(jax.lax.map(view, cams))

    lo, hi = 0.0, 4.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(area(mid)) > target else (lo, mid)
    return 0.5 * (lo + hi)


def open_boundary(vertices, atlas, chunk: int = 1024):
    """Each anchored Gaussian's signed distance (metres, > 0 inside the surface) to the open boundary of its
    own connected piece of the atlas's faces (edges of one face: ICT-FaceKit's neck cut and eyelids; its
    eyeballs are other pieces), and the unit direction away from it along the surface in the Gaussian's
    (tangent, bitangent) frame. vertices [V, 3] -> distance [G] (inf without a boundary), direction [G, 2]"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from headsup_jax.geometry.anchor import surface_frames

    v = np.asarray(vertices, np.float64)
    weld = np.unique(np.round(v, 6), axis=0, return_inverse=True)[1].ravel()  # UV seams split vertices
    f = np.asarray(atlas.face_vertices)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])  # [3F, 2]
    opposite = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    _, inverse, counts = np.unique(np.sort(weld[edges], 1), axis=0, return_inverse=True, return_counts=True)
    single = counts[inverse.ravel()] == 1
    n = int(weld.max()) + 1
    piece = connected_components(coo_matrix((np.ones(len(edges)), tuple(weld[edges].T)), (n, n)))[1][weld]  # [V]
    row = np.full(int(atlas.faces.max()) + 1, -1)
    row[atlas.faces] = np.arange(len(f))
    own = piece[f[row[atlas.texel_faces()], 0]]  # [G] each Gaussian's piece
    edge_piece = piece[edges[single, 0]]  # [E]
    point, frame, _ = (np.asarray(a, np.float64) for a in surface_frames(jnp.asarray(vertices, jnp.float32), atlas))
    G = point.shape[0]
    if not single.any():
        return np.full(G, np.inf), np.zeros((G, 2))
    a = v[edges[single, 0]]  # [E, 3] each open edge: a start, its direction, the face's third corner
    ab, ac = v[edges[single, 1]] - a, v[opposite[single]] - a
    inward = ac - np.sum(ac * ab, -1, keepdims=True) / np.sum(ab * ab, -1, keepdims=True) * ab  # [E, 3] in the face
    inward /= np.linalg.norm(inward, axis=-1, keepdims=True)
    nearest, distance = np.empty(G, np.int64), np.empty(G)
    for i in range(0, G, chunk):  # [chunk, E] point-to-segment distances
        d = point[i:i + chunk, None] - a[None]
        t = np.clip(np.sum(d * ab, -1) / np.sum(ab * ab, -1), 0.0, 1.0)
        gap = np.where(own[i:i + chunk, None] == edge_piece[None], np.linalg.norm(d - t[..., None] * ab, axis=-1),
                       np.inf)
        nearest[i:i + chunk], distance[i:i + chunk] = np.argmin(gap, 1), np.min(gap, 1)
    # outside: conservative-ring texels a little past the edge (far away, the surface's curvature flips
    # the side of the edge's plane, so only near points can be outside)
    outside = (np.sum((point - a[nearest]) * inward[nearest], -1) < 0) & (distance < 2 * atlas.texel_size)
    distance = np.where(outside, -distance, distance)
    direction = np.einsum("gck,gc->gk", frame[:, :, :2], inward[nearest])  # [G, 2]
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    return distance, direction


_CALIBRATIONS: dict = {}  # (template, atlas resolution, height, eps2d) -> (inset [G], log_scale [G])


def calibrate(fitter, height: int) -> None:
    """Sets `fitter`'s per-splat calibration (`calibrate_splats` at `height` px), computed once per process
    for each template (by name), atlas resolution, height and eps2d."""
    s = fitter.settings
    key = (s.template, s.atlas_resolution, height, s.eps2d)
    if key not in _CALIBRATIONS:
        calibrate_splats(fitter, height)
        _CALIBRATIONS[key] = (fitter.inset, fitter.log_scale)
    fitter.inset, fitter.log_scale = _CALIBRATIONS[key]


def calibrate_splats(fitter, height: int, steps: int = 100, views: int = 24, lr: float = 0.05) -> np.ndarray:
    """Fits each of `fitter`'s Gaussians' inset and tangent log-scale ([G] each, set on the fitter) so that the
    template's splat silhouettes equal its ray-cast mesh's (`data.raycast.mesh_coverage`, what the
    synthetic masks are) in `views` random cameras around the head at `height` px: one global inset
    cannot both pull in the rim and undo a thin curl's overhang (ICT-FaceKit's ears) without shrinking
    the rest. Starts from `calibrated_inset`; Adam on the mean squared difference. -> the losses [steps]"""
    from headsup_jax.data.raycast import mesh_coverage
    from headsup_jax.geometry.rigs import make_rig
    from headsup_jax.render import Camera

    t, atlas, eps2d = fitter.template, fitter.atlas, fitter.settings.eps2d
    inset = calibrated_inset(t, atlas, height, eps2d, fitter=fitter)
    rig = make_rig(f"random{views}", height, seed=1)
    target = jnp.asarray(mesh_coverage(t.vertices, t.faces[atlas.faces], rig))  # [C, H, W]
    cams = (jnp.asarray(np.stack([c.K for c in rig]), jnp.float32),
            jnp.asarray(np.stack([c.world_to_cam for c in rig]), jnp.float32))
    H, W = rig[0].height, rig[0].width

    def loss(x):
        g = fitter._gaussians(None, 1, x["inset"], x["log_scale"])
        view = jax.checkpoint(lambda km: silhouette(g, Camera(world_to_cam=km[1], K=km[0], width=W, height=H), eps2d))
        value = jnp.mean((jax.lax.map(view, cams) - target) ** 2)
        return value, value

    x = {"inset": jnp.full(atlas.count, inset, jnp.float32), "log_scale": jnp.zeros(atlas.count, jnp.float32)}
    x, history = adam_scan(loss, x, lr, steps)
    fitter.inset, fitter.log_scale = x["inset"], x["log_scale"]
    return np.asarray(history)


def adam_scan(objective, x, lr: float, steps: int):
    """`steps` Adam steps on `objective(x) -> (value to minimise, aux)`, one jitted scan. -> (x, aux per step)"""
    opt = optax.adam(lr)

    def step(carry, _):
        x, state = carry
        (_, aux), grad = jax.value_and_grad(objective, has_aux=True)(x)
        updates, state = opt.update(grad, state)
        return (optax.apply_updates(x, updates), state), aux

    (x, _), history = jax.jit(lambda x: jax.lax.scan(step, (x, opt.init(x)), None, length=steps))(x)
    return x, history


def _rodrigues(w):
    theta = jnp.sqrt(jnp.sum(w * w) + 1e-12)
    k = jnp.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / theta
    return jnp.eye(3) + jnp.sin(theta) * k + (1 - jnp.cos(theta)) * k @ k


def _similarity(params, r0):
    """Parameters -> (scale, rotation [3, 3], translation [3]) of the normalised frame -> template."""
    return (jnp.exp(params["log_scale"]), _rodrigues(params["rotvec"]) @ r0,
            jnp.asarray(TARGET, jnp.float32) + _TRANSLATION_UNIT * params["translation"])


class MaskFitter:
    """Silhouette losses and their Adam loops for one capture's cameras (normalised frame)."""

    def __init__(self, template, settings: MaskFitSettings, atlas=None):
        from headsup_jax.geometry import build_atlas

        self.template, self.settings = template, settings
        self.atlas = build_atlas(template, settings.atlas_resolution) if atlas is None else atlas
        self.vertices = jnp.asarray(template.vertices, jnp.float32)
        self.deltas = None if template.identity_deltas is None else jnp.asarray(template.identity_deltas)
        self.inset = None  # [G] tangent standard deviations (`calibrate_splats`); None: settings.inset
        self.log_scale = jnp.zeros(self.atlas.count, jnp.float32)  # [G] added to the tangent log-scales
        distance, direction = open_boundary(template.vertices, self.atlas)
        self.boundary_distance = jnp.asarray(np.minimum(distance, 1e3), jnp.float32)  # [G] metres
        self.boundary_direction = jnp.asarray(direction, jnp.float32)  # [G, 2] local (tangent, bitangent)

    def _gaussians(self, identity, stride: int, inset=None, log_scale=None):
        """Every stride-th anchored Gaussian, its tangent scales x sqrt(stride) x exp(log_scale), moved inward
        along the normal by `inset` tangent standard deviations (a number or [G]; default: the calibrated
        ones, else settings.inset): splats centred on the surface reach past the mesh's outline (most at
        the grazing rim, where they pile up), so the silhouette would come out too large. Splats nearer
        than that to an open boundary also slide along the surface to that distance from it: the normal
        inset alone leaves them hanging past the cut (the boundary's distances are the neutral template's)."""
        from headsup_jax.geometry import anchor
        from headsup_jax.geometry.anchor import TANGENT_SCALE, surface_frames

        v = self.vertices if identity is None else self.vertices + jnp.einsum("k,kvc->vc", identity, self.deltas)
        widen = np.sqrt(stride)
        _, _, footprint = surface_frames(v, self.atlas)
        inset = (self.settings.inset if self.inset is None else self.inset) if inset is None else inset
        inset = inset * widen * TANGENT_SCALE * jnp.mean(footprint, -1)  # [G] metres
        slide = jnp.maximum(inset - self.boundary_distance, 0.0)[:, None] * self.boundary_direction  # [G, 2]
        g = anchor(v, self.atlas, offsets=jnp.concatenate([slide, -inset[:, None]], -1))
        log_scale = self.log_scale if log_scale is None else log_scale
        g = dataclasses.replace(g, scales=g.scales * jnp.exp(log_scale[:, None] * jnp.array([1.0, 1.0, 0.0])))
        g = jax.tree.map(lambda a: a[::stride], g)
        return dataclasses.replace(g, scales=g.scales * jnp.array([widen, widen, 1.0]))

    def loss(self, params, r0, masks, K, w2c, identity=None, stride: int = 1):
        """Mean squared alpha - mask over the views. masks [V, H, W], K [V, 3, 3], w2c [V, 4, 4]; `stride`:
        every stride-th Gaussian only, wider (a coarse, smoother silhouette)."""
        from headsup_jax.render import Camera

        s, R, t = _similarity(params, r0)
        rc = w2c[:, :3, :3] @ R.T  # [V, 3, 3]
        tc = s * w2c[:, :3, 3] - jnp.einsum("vij,j->vi", rc, t)
        cams = jnp.zeros_like(w2c).at[:, :3, :3].set(rc).at[:, :3, 3].set(tc).at[:, 3, 3].set(1.0)
        g = self._gaussians(identity, stride)
        H, W = masks.shape[1:]
        # one view at a time, recomputed in the backward pass: the dense [G, H * W] alphas of every view
        # and start at once took 17 GB for ICT-FaceKit at atlas 64
        view = jax.checkpoint(lambda km: silhouette(g, Camera(world_to_cam=km[1], K=km[0], width=W, height=H),
                                                    self.settings.eps2d))
        alpha = jax.lax.map(view, (K, cams))  # [V, H, W]
        out = jnp.mean((alpha - masks) ** 2)
        if identity is not None:
            out = out + self.settings.identity_prior * jnp.mean(identity ** 2)
        return out

    def run(self, params, r0, masks, K, w2c, steps: int, with_identity: bool = False, stride: int = 1):
        """Adam from `params` (and zero identity coefficients when `with_identity`) for `steps`; params
        and r0 may carry a leading batch of starts. -> (params, identity or None, losses [steps(, S)])"""
        batched = r0.ndim == 3
        loss = functools.partial(self.loss, stride=stride)
        loss = jax.vmap(loss, (0, 0, None, None, None)) if batched else loss
        x = {"p": params, "id": jnp.zeros(self.deltas.shape[0]) if with_identity else None}

        def objective(x):
            values = loss(x["p"], r0, masks, K, w2c) if not with_identity else \
                self.loss(x["p"], r0, masks, K, w2c, x["id"], stride)
            return jnp.sum(values), values

        x, history = adam_scan(objective, x, self.settings.lr, steps)
        return x["p"], x["id"], history


def _normalisation(world_to_cam):
    """Similarity N of the capture world onto a rig of RIG_RADIUS around its look-at centre at the origin."""
    from headsup_jax.data.align import Similarity

    c = look_at_centre(world_to_cam)
    centres = -np.einsum("vji,vj->vi", world_to_cam[:, :3, :3], world_to_cam[:, :3, 3])
    radius = float(np.median(np.linalg.norm(centres - c, axis=1)))
    s = RIG_RADIUS / radius
    return Similarity(s, np.eye(3), -s * c), c, radius


def fit_masks(capture, cameras, settings: MaskFitSettings):
    """The capture-world -> template Similarity fitting the template to `capture`'s masks seen by
    `cameras` (CameraSpecs of the capture's ids, the original poses). -> (Similarity, details)"""
    from headsup_jax.data.align import Similarity, transform_camera
    from headsup_jax.geometry import load_template

    t0 = time.perf_counter()
    w2c = np.stack([np.asarray(c.world_to_cam, np.float64) for c in cameras])
    norm, centre, radius = _normalisation(w2c)
    w2c_n = jnp.asarray(np.stack([transform_camera(m, norm) for m in w2c]), jnp.float32)
    template = load_template(settings.template)
    fitter = MaskFitter(template, settings)
    if settings.inset is None:
        calibrate(fitter, min(settings.fine_height, cameras[0].height))
    starts = jnp.asarray(cube_rotations(), jnp.float32)
    S = starts.shape[0]
    zeros = {"rotvec": jnp.zeros((S, 3)), "log_scale": jnp.zeros(S), "translation": jnp.zeros((S, 3))}
    masks, K = (jnp.asarray(a, jnp.float32) for a in load_masks(capture, settings.coarse_height))
    params, _, coarse = fitter.run(zeros, starts, masks, K, w2c_n, settings.coarse_steps, stride=settings.coarse_stride)
    final = np.asarray(coarse[-1])
    keep = np.argsort(final)[:settings.refine_starts]  # the front/back flip of a head often scores close
    masks, K = (jnp.asarray(a, jnp.float32) for a in load_masks(capture, settings.fine_height))
    params, _, fine = fitter.run(jax.tree.map(lambda a: a[keep], params), starts[keep], masks, K, w2c_n,
                                 settings.fine_steps, stride=settings.fine_stride)  # the kept starts at once
    i = int(np.argmin(np.asarray(fine[-1])))
    best, params, history = int(keep[i]), jax.tree.map(lambda a: a[i], params), fine[:, i]
    identity = None
    if settings.identity_steps and fitter.deltas is not None:
        params, identity, history = fitter.run(params, starts[best], masks, K, w2c_n, settings.identity_steps, True,
                                               settings.fine_stride)
    s, R, t = (np.asarray(a, np.float64) for a in _similarity(params, starts[best]))
    sim = Similarity(float(s), R, t).compose(norm)
    inset = settings.inset if fitter.inset is None else float(jnp.mean(fitter.inset))  # the calibrated ones' mean
    info = {"look_at_centre": centre.tolist(), "rig_radius": radius, "start": best, "inset": inset,
            "coarse_losses": [float(v) for v in final], "loss": float(history[-1]),
            "identity": None if identity is None else np.asarray(identity).tolist(),
            "seconds": time.perf_counter() - t0}
    return sim, info
