"""`headsup template ...`: look at a head template, its UV atlas and its anchored Gaussians."""
from __future__ import annotations

import pathlib


def register(sub) -> None:
    preview = sub.add_parser("preview", help="atlas by region + renders of the anchored Gaussians, to one PNG")
    preview.add_argument("--template", default="procedural",
                         help="procedural | ict | flame:MODEL[,UV_OBJ] | ICT .npz or folder | "
                              "HEAD.obj[,BLENDSHAPE_DIR]")
    preview.add_argument("--resolution", type=int, default=256, help="atlas resolution R (32 to 1024)")
    preview.add_argument("--image-size", type=int, default=256, help="size of each rendered view in pixels")
    preview.add_argument("--cache-dir", default=None, help="where to cache atlases (default: no cache)")
    preview.add_argument("--out", default="outputs/template_preview.png", help="PNG to write")
    preview.set_defaults(run=run_preview)


def run_preview(args) -> None:
    from PIL import Image

    from headsup_jax.geometry.loaders import load_template
    from headsup_jax.geometry.preview import preview_sheet

    template = load_template(args.template)
    sheet = preview_sheet(template, args.resolution, args.image_size, args.cache_dir)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    print(f"wrote {path} ({template.name}, atlas {args.resolution}x{args.resolution}; top: neutral, "
          "bottom: jawOpen + mouthSmile)")
