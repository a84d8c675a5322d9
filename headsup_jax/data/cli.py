"""`headsup data ...`: validate capture folders, build TFDS/ArrayRecord shards, generate synthetic subjects, inspect,
import outside capture formats."""
from __future__ import annotations


def register(sub) -> None:
    validate = sub.add_parser("validate", help="check every capture folder under DIR; non-zero exit on problems")
    validate.add_argument("dir", help="folder of capture folders")
    validate.set_defaults(run=run_validate)

    build = sub.add_parser("build", help="turn capture folders into TFDS ArrayRecord shards (splits by subject)")
    build.add_argument("dir", help="folder of capture folders")
    build.add_argument("--out", required=True, help="TFDS data_dir; the dataset goes to OUT/head_captures/1.0.0")
    build.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    build.add_argument("--validation", type=float, default=0.1, help="fraction of subjects held out for validation")
    build.add_argument("--test", type=float, default=0.1, help="fraction of subjects held out for test")
    build.add_argument("--skip-invalid", action="store_true", help="skip bad captures (listed in the info)")
    build.set_defaults(run=run_build)
    register_synth(sub)

    inspect = sub.add_parser("inspect", help="contact sheet PNG of a capture tree or a built TFDS dataset")
    inspect.add_argument("path", help="folder of capture folders, or a TFDS dataset folder (.../head_captures/1.0.0)")
    inspect.add_argument("--out", default="outputs/contact_sheet.png", help="PNG to write")
    inspect.add_argument("--subjects", type=int, default=4, help="subjects to show (one row each)")
    inspect.add_argument("--views", type=int, default=6, help="views to show per subject")
    inspect.add_argument("--split", default="train", help="split to show for a TFDS dataset")
    inspect.set_defaults(run=run_inspect)

    from headsup_jax.data.importers import FORMATS

    imp = sub.add_parser("import", help="convert a COLMAP, transforms.json, NeRSemble or Ava-256 capture "
                         "into a capture folder")
    imp.add_argument("src", help="the source capture (folder, or a transforms.json file)")
    imp.add_argument("--from", dest="fmt", required=True, choices=FORMATS,
                     help="the source format")
    imp.add_argument("--out", required=True, help="capture folder to write (must not exist or be empty)")
    imp.add_argument("--subject", default=None, help="subject name in error messages (default: the --out name)")
    imp.add_argument("--frame", default=None, help="frame of a multi-frame source (NeRSemble index, Ava-256 id)")
    imp.add_argument("--units", default=None, choices=("mm", "cm", "m"),
                     help="units of the source's translations (default: detected from the rig's size)")
    imp.set_defaults(run=run_import)

    from headsup_jax.data.align import METHODS

    align = sub.add_parser("align", help="move a capture's cameras into the template's frame (head at the origin, "
                           "+y up, +z out of the face, metres); the originals go to alignment.json")
    align.add_argument("dir", help="capture folder (its cameras.json is rewritten)")
    align.add_argument("--method", default="masks", choices=METHODS,
                       help="masks: fit the template's silhouette; manual: the similarity in --pose")
    align.add_argument("--pose", default=None,
                       help="manual: JSON {scale, rotation (3x3 or [w, x, y, z]), translation}, "
                       "capture world -> template")
    align.add_argument("--template", default="procedural", help="head template spec fitted by --method masks")
    align.add_argument("--atlas-resolution", type=int, default=32,
                       help="atlas of the template's silhouette Gaussians (--method masks; ICT-FaceKit: 64)")
    align.add_argument("--undo", action="store_true", help="restore the original cameras and remove alignment.json")
    align.set_defaults(run=run_align)


def run_validate(args) -> int:
    from headsup_jax.data.capture import validate_tree

    report = validate_tree(args.dir)
    bad = 0
    for subject, frame, problems in report:
        name = f"{subject}/{frame}" if frame else subject
        print(f"{'OK  ' if not problems else 'FAIL'} {name}" + (f" ({len(problems)} problems)" if problems else ""))
        for p in problems:
            print(f"     {p.file} [{p.field}]: {p.message}")
        bad += bool(problems)
    print(f"{len(report)} captures, {bad} with problems" if report else f"no captures found under {args.dir}")
    return 1 if bad or not report else 0


def run_build(args) -> None:
    from headsup_jax.data.tfds_builder import build_dataset, dataset_metadata

    path = build_dataset(args.dir, args.out, args.seed, args.validation, args.test, args.skip_invalid)
    meta = dataset_metadata(path)
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in meta["subjects"].items())
    print(f"wrote {path} (subjects {sizes}; {len(meta['skipped'])} skipped)")


def run_inspect(args) -> None:
    from headsup_jax.data.inspect import write_contact_sheet

    write_contact_sheet(args.path, args.out, args.subjects, args.views, args.split)
    print(f"wrote {args.out}")


def run_import(args) -> None:
    from headsup_jax.data.importers import import_capture

    capture, units, undistorted = import_capture(args.fmt, args.src, args.out, args.subject, args.frame, args.units)
    print(f"wrote {args.out}: {len(capture.cameras)} cameras, units {units} -> m, "
          f"{len(undistorted)} undistorted, masks {'yes' if capture.mask_files else 'no'}")


def run_align(args) -> None:
    from headsup_jax.data.align import align_capture, rotation_angle_degrees, undo_alignment
    from headsup_jax.data.align_masks import MaskFitSettings

    if args.undo:
        print(f"{args.dir}: original cameras restored" if undo_alignment(args.dir) else f"{args.dir}: not aligned")
        return
    settings = MaskFitSettings(template=args.template, atlas_resolution=args.atlas_resolution)
    sim, info = align_capture(args.dir, args.method, args.pose, settings)
    print(f"aligned {args.dir} ({args.method}): scale {sim.scale:.6g}, rotation "
          f"{rotation_angle_degrees(sim.rotation):.1f} deg, translation {sim.translation.round(4).tolist()}"
          + (f", silhouette loss {info['loss']:.4f}" if "loss" in info else "") + "; originals in alignment.json")


def register_synth(sub) -> None:
    synth = sub.add_parser("synth", help="generate synthetic subjects in the capture format")
    synth.add_argument("--subjects", type=int, required=True, help="number of subjects to generate")
    synth.add_argument("--out", required=True, help="folder to write the capture folders to")
    synth.add_argument("--rig", default="frontal16", help="frontal16, dome80 or random<N>")
    synth.add_argument("--resolution", type=int, default=256, help="image height (width = 0.75 x height)")
    synth.add_argument("--seed", type=int, default=0, help="subject k depends only on (seed, k)")
    synth.add_argument("--template", default="procedural", help="head template spec (as `headsup template preview`)")
    synth.add_argument("--frames", type=int, default=1, help="1: neutral; more: plus random expressions")
    synth.add_argument("--start", type=int, default=0, help="first subject index (regenerate a range alone)")
    synth.add_argument("--workers", type=int, default=1, help="parallel processes")
    synth.add_argument("--texture-resolution", type=int, default=None,
                       help="UV texture height (default: about 2 texels per image pixel on the face)")
    synth.add_argument("--no-jitter", action="store_true", help="exact rig for every subject")
    synth.add_argument("--overwrite", action="store_true", help="re-render subjects already written")
    synth.set_defaults(run=run_synth)


def run_synth(args) -> None:
    import time

    from headsup_jax.data.synth import SynthConfig, generate

    config = SynthConfig(rig=args.rig, resolution=args.resolution, seed=args.seed, template=args.template,
                         frames=args.frames, texture_resolution=args.texture_resolution, jitter=not args.no_jitter)
    t0 = time.perf_counter()
    views = generate(args.out, args.subjects, config, workers=args.workers, start=args.start, overwrite=args.overwrite)
    dt = time.perf_counter() - t0
    print(f"wrote {args.subjects} subjects to {args.out}: {views} views rendered in {dt:.1f} s"
          + (f" ({views / dt:.1f} views/s)" if views else " (all existed already)"))
