"""`headsup render ...`: render synthetic Gaussian scenes to PNG (the renderer's own demo)."""
from __future__ import annotations

import pathlib


def register(sub) -> None:
    demo = sub.add_parser("demo", help="render a head-like Gaussian scene from 4 views to one PNG")
    demo.add_argument("--out", default="outputs/demo.png", help="PNG to write")
    demo.add_argument("--gaussians", type=int, default=20000, help="Gaussians in the scene")
    demo.add_argument("--resolution", type=int, default=256, help="size of each view in pixels")
    demo.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas"],
                      help="rasteriser backend (auto: pallas on TPU / Hopper GPUs, xla elsewhere)")
    demo.set_defaults(run=run_demo)


def run_demo(args) -> None:
    import jax
    import numpy as np
    from PIL import Image

    from headsup_jax.render import rasterize
    from headsup_jax.render.cameras import orbit
    from headsup_jax.render.scenes import head_scene

    scene = head_scene(seed=0, n=args.gaussians)
    cams = orbit(4, 0.7, args.resolution, args.resolution, fov_y_degrees=30.0, elevation_degrees=10.0)
    render = jax.jit(lambda cam: rasterize(scene, cam, background=np.ones(3, np.float32), backend=args.backend))
    tiles = []
    for cam in cams:
        out = render(cam)
        dropped = int(out.stats["dropped_pairs"])
        if dropped:
            print(f"warning: {dropped} (tile, Gaussian) pairs dropped; raise tile_capacity/max_pairs")
        tiles.append(np.concatenate([np.asarray(out.rgb), np.repeat(np.asarray(out.alpha)[..., None], 3, -1)], 0))
    sheet = (np.clip(np.concatenate(tiles, 1), 0, 1) * 255).astype(np.uint8)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    print(f"wrote {path} ({args.gaussians} Gaussians, 4 views, top: rgb, bottom: alpha)")
