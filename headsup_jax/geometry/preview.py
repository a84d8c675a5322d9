"""A picture of a template: its atlas coloured by region, and the anchored Gaussians rendered from
4 views, neutral (top) and with jawOpen + mouthSmile (bottom)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from headsup_jax.geometry.anchor import anchor, surface_frames
from headsup_jax.geometry.atlas import UVAtlas, build_atlas
from headsup_jax.geometry.rig import deform, expression_coefficients
from headsup_jax.geometry.template import HeadTemplate
from headsup_jax.render.sh import rgb_to_sh

EXPRESSION = {"jawOpen": 0.7, "mouthSmile_L": 1.0, "mouthSmile_R": 1.0}
AZIMUTHS = (0.0, 45.0, 90.0, -45.0)
LIGHT = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])


def region_colors(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1]. [n, 3]"""
    import matplotlib

    return np.asarray(matplotlib.colormaps["tab20"](np.arange(n) % 20))[:, :3]


def atlas_image(atlas: UVAtlas) -> np.ndarray:
    """The atlas grid coloured by region (white where invalid, ring texels darker). [R, R, 3] in [0, 1]"""
    colors = region_colors(len(atlas.region_names))
    img = np.where(atlas.mask[..., None], colors[np.maximum(atlas.region, 0)], 1.0)
    shade = 0.55 + 0.45 * np.clip(atlas.normal_map @ LIGHT, 0, 1)
    img = np.where(atlas.mask[..., None], img * shade[..., None], img)
    return np.where((atlas.mask & ~atlas.exact)[..., None], img * 0.6, img)


def _render_views(template: HeadTemplate, atlas: UVAtlas, vertices, size: int) -> list[np.ndarray]:
    import jax.numpy as jnp

    from headsup_jax.render import rasterize
    from headsup_jax.render.cameras import look_at

    _, frame, _ = surface_frames(jnp.asarray(vertices), atlas)
    albedo = region_colors(len(atlas.region_names))[atlas.gather(atlas.region[..., None])[:, 0]]  # [G, 3]
    color = albedo * (0.35 + 0.65 * np.clip(np.asarray(frame[:, :, 2]) @ LIGHT, 0, 1)[:, None])
    gaussians = anchor(vertices, atlas, sh=jnp.asarray(rgb_to_sh(color), jnp.float32)[:, None, :])
    used = np.asarray(template.vertices)[np.unique(atlas.face_vertices)]
    centre = 0.5 * (used.min(0) + used.max(0))
    extent = float(np.max(used.max(0) - used.min(0)))
    views = []
    for az in np.radians(AZIMUTHS):
        eye = centre + 2.2 * extent * np.array([np.sin(az), 0.15, np.cos(az)])
        cam = look_at(eye, size, size, fov_y_degrees=30.0, target=centre)
        out = rasterize(gaussians, cam, background=jnp.ones(3), tile_capacity=8192,
                        max_pairs=16 * atlas.count)
        if int(out.stats["dropped_pairs"]):
            print(f"warning: {int(out.stats['dropped_pairs'])} (tile, Gaussian) pairs dropped")
        views.append(np.clip(np.asarray(out.rgb), 0, 1))
    return views


def _label(img: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray((img * 255).astype(np.uint8))
    ImageDraw.Draw(pil).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(pil, np.float32) / 255


def _legend(atlas: UVAtlas, size: int, lines: list[str]) -> np.ndarray:
    pil = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    for k, (name, c) in enumerate(zip(atlas.region_names, region_colors(len(atlas.region_names)))):
        draw.rectangle([6, 8 + 14 * k, 16, 18 + 14 * k], fill=tuple(int(255 * x) for x in c))
        draw.text((22, 7 + 14 * k), name, fill=(0, 0, 0))
    y = 16 + 14 * len(atlas.region_names)
    for line in lines:
        draw.text((6, y), line, fill=(0, 0, 0))
        y += 13
    return np.asarray(pil, np.float32) / 255


def preview_sheet(template: HeadTemplate, resolution: int, image_size: int = 256, cache_dir=None) -> np.ndarray:
    """[2 * S, 5 * S, 3] uint8: atlas and legend in the first column, renders in the others."""
    atlas = build_atlas(template, resolution, cache_dir=cache_dir)
    known = {k: w for k, w in EXPRESSION.items() if k in template.expression_names}
    expr = expression_coefficients(template, known)
    neutral = _render_views(template, atlas, deform(template), image_size)
    posed = _render_views(template, atlas, deform(template, None, expr), image_size)
    atlas_img = np.asarray(Image.fromarray((atlas_image(atlas) * 255).astype(np.uint8)).resize(
        (image_size, image_size), Image.NEAREST), np.float32) / 255
    info = [f"{template.name}", f"R = {resolution}, G = {atlas.count}", f"{len(atlas.charts)} charts",
            "bottom row:"] + [f"  {k} = {w:g}" for k, w in known.items()]
    top = [_label(atlas_img, "atlas")] + [_label(v, f"neutral {a:+.0f} deg") for v, a in zip(neutral, AZIMUTHS)]
    bottom = [_legend(atlas, image_size, info)] + [_label(v, "expression") for v in posed]
    sheet = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    return (np.clip(sheet, 0, 1) * 255).astype(np.uint8)
