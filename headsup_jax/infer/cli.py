"""`headsup reconstruct`, `headsup fit`, `headsup animate`, `headsup render views|compare` (beside the
renderer's `demo`) and `headsup view`: using a trained model and the files of Gaussians it writes. One
`add_*` function per command."""
from __future__ import annotations


def _views_options(parser) -> None:
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--views", help="input camera indices into cameras.json, e.g. 0,3,7")
    pick.add_argument("--num-views", type=int, help="input views spread over the rig (default: the config's N)")


def _model_options(parser) -> None:
    parser.add_argument("--workdir", required=True, help="the training run's folder (local or gs://)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--capture", required=True, help="a capture folder (cameras.json, images/, masks/)")
    _views_options(parser)


def _capture_and_views(args):
    """The validated capture and the --views indices, checked before the model is loaded (fast errors)."""
    from headsup_jax.data.capture import load_capture
    from headsup_jax.infer.reconstruct import parse_views, pick_views

    capture = load_capture(args.capture)
    views = None if args.views is None else parse_views(args.views)
    if views is not None or args.num_views is not None:
        pick_views(capture, views, args.num_views)
    return capture, views


def add_reconstruct(parser) -> None:
    _model_options(parser)
    parser.add_argument("--out", required=True, help="head.ply (3DGS layout) or head.splat")
    parser.add_argument("--sh-degree", type=int, choices=[0, 1, 2, 3],
                        help="PLY SH degree (default: the model's; 3 pads zeros, 45 f_rest, for strict viewers)")
    parser.set_defaults(run=run_reconstruct)


def run_reconstruct(args) -> None:
    from headsup_jax.export.checks import save_gaussians
    from headsup_jax.infer.reconstruct import reconstruct
    from headsup_jax.infer.trained import load_trained

    capture, views = _capture_and_views(args)
    trained = load_trained(args.workdir, args.step)
    result = reconstruct(trained, capture, views, args.num_views)
    save_gaussians(result.head, args.out, args.sh_degree)
    print(f"wrote {args.out}: {result.head.count} Gaussians from {len(result.input_ids)} views "
          f"({','.join(result.input_ids)}) of {result.capture.subject!r}, step {trained.step}; "
          f"forward {1e3 * result.latency_s:.1f} ms (compile and first run {result.compile_s:.1f} s)")


def add_fit(parser) -> None:
    parser.add_argument("--capture", required=True, help="a capture folder (cameras.json, images/, masks/)")
    parser.add_argument("--init", metavar="WORKDIR",
                        help="a training run: start from its prediction from the same views (refinement)")
    parser.add_argument("--step", type=int, help="checkpoint step of --init (default: the newest)")
    parser.add_argument("--config", default="configs/headsup.py:tiny",
                        help="without --init: the config whose template, atlas, renderer and losses are fitted")
    parser.add_argument("--height", type=int, default=64, help="without --init: image height of the fit (pixels)")
    parser.add_argument("--steps", type=int, help="Adam steps (default: 600 from the template, 100 from --init)")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate on the raw UV map")
    parser.add_argument("--out", required=True, help="head.ply (3DGS layout) or head.splat")
    parser.add_argument("--sh-degree", type=int, choices=[0, 1, 2, 3], help="PLY SH degree (as reconstruct)")
    _views_options(parser)
    parser.set_defaults(run=run_fit)


def run_fit(args) -> None:
    from headsup_jax.export.checks import save_gaussians
    from headsup_jax.infer.fit import fit_capture
    from headsup_jax.infer.trained import load_trained
    from headsup_jax.train.config import load_config
    from headsup_jax.train.workdir import resolve_template

    capture, views = _capture_and_views(args)
    if args.init:
        source = {"trained": load_trained(args.init, args.step)}
    else:
        source = {"config": resolve_template(load_config(args.config)), "height": args.height}
    result = fit_capture(capture, views=views, num_views=args.num_views, steps=args.steps, lr=args.lr, **source)
    save_gaussians(result.head, args.out, args.sh_degree)
    print(f"wrote {args.out}: {result.head.count} Gaussians fitted to {len(result.input_ids)} views of "
          f"{capture.subject!r} from the {result.start}; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} "
          f"in {len(result.losses)} steps ({result.seconds:.1f} s)")


def add_animate(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--capture", help="a neutral capture folder, reconstructed with --workdir's model")
    source.add_argument("--head", help="head.ply written by headsup reconstruct or fit (head Gaussians in atlas "
                        "order); its template and atlas come from --workdir or --config")
    parser.add_argument("--workdir", help="the training run's folder (local or gs://)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--config", help="with --head and no --workdir: the config whose template and atlas the "
                        "head was fitted on (headsup fit --config)")
    _views_options(parser)
    drive = parser.add_mutually_exclusive_group(required=True)
    drive.add_argument("--blendshapes", help="anim.json (a list of {name: weight} per frame) or "
                       "anim.csv (a header of names, e.g. a Live Link Face export)")
    drive.add_argument("--drive", metavar="CAPTURE_DIR", help="driving images: one subject's frames (frame folders, "
                       "or one capture), each regressed to coefficients by --regressor-workdir's model")
    parser.add_argument("--regressor-workdir", help="--drive: the blendshape regressor's run (headsup train "
                        "--config configs/regressor.py:tiny)")
    parser.add_argument("--save-blendshapes", metavar="PATH", help="--drive: also write the regressed coefficients "
                        "as an animation JSON file (what --blendshapes reads)")
    parser.add_argument("--method", default="rig", choices=["rig", "latent"],
                        help="rig: the Gaussians ride the template deformed by the blendshapes; latent: the "
                        "paper's latent expression model (--expression-workdir; the head from --capture)")
    parser.add_argument("--expression-workdir", help="--method latent: the expression model's run (headsup train "
                        "--config configs/expression.py:tiny); its base run must be --workdir")
    parser.add_argument("--cameras", default="frontal16", choices=["frontal16", "turntable"],
                        help="frontal16: its most frontal camera, fixed; turntable: one orbit over the frames")
    parser.add_argument("--resolution", type=int, default=256, help="image height in pixels")
    parser.add_argument("--out", required=True, help="anim.mp4")
    parser.add_argument("--ply-sequence", metavar="DIR", help="also write one PLY per frame, DIR/frame_00000.ply, ...")
    parser.add_argument("--fps", type=int, default=30, help="video frames per second")
    parser.add_argument("--background", default="1,1,1", help="background colour R,G,B in [0, 1]")
    parser.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas"], help="rasteriser backend")
    parser.set_defaults(run=run_animate)


def _animation_head(args):
    """The neutral head of --capture (reconstructed by --workdir's model) or --head (a file)."""
    from headsup_jax.errors import InputError
    from headsup_jax.infer.animate import neutral_head

    if args.capture is not None:
        if args.workdir is None or args.config is not None:
            raise InputError("--capture needs --workdir (the model that reconstructs it), not --config")
        from headsup_jax.infer.reconstruct import reconstruct
        from headsup_jax.infer.trained import load_trained

        capture, views = _capture_and_views(args)
        trained = load_trained(args.workdir, args.step)
        result = reconstruct(trained, capture, views, args.num_views)
        print(f"reconstructed {result.capture.subject!r} from {len(result.input_ids)} views, step {trained.step}")
        head = neutral_head(trained.template, trained.atlas, result.head, f"the reconstruction of {args.capture}")
        if args.method == "latent":
            import dataclasses

            from headsup_jax.infer.animate import capture_latent

            head = dataclasses.replace(head, latent=capture_latent(trained, capture, views, args.num_views))
        return head, trained
    if (args.workdir is None) == (args.config is None):
        raise InputError("--head needs exactly one of --workdir (the run that reconstructed it) or --config "
                         "(the config it was fitted on): they give its template and atlas")
    if not args.head.lower().endswith(".ply"):
        raise InputError(f"--head {args.head}: only .ply heads can be animated (.splat files sort the Gaussians, "
                         "losing their atlas order)")
    from headsup_jax.export.ply import load_ply

    gaussians = load_ply(args.head)
    if args.workdir is not None:
        from headsup_jax.infer.trained import load_trained

        trained = load_trained(args.workdir, args.step)
        template, atlas = trained.template, trained.atlas
    else:
        from headsup_jax.train.config import load_config
        from headsup_jax.train.experiment import template_and_atlas
        from headsup_jax.train.workdir import resolve_template

        template, atlas = template_and_atlas(resolve_template(load_config(args.config)))
    return neutral_head(template, atlas, gaussians, args.head), None


def _expression_model(expression_workdir, trained):
    """(ExpressionModel, base HeadsUp) of an expression run whose base is `trained`'s run (refused otherwise)."""
    import json

    from etils import epath

    from headsup_jax.errors import InputError
    from headsup_jax.train.expression import load_expression

    saved = epath.Path(expression_workdir) / "config.json"
    base = json.loads(saved.read_text()).get("base") if saved.exists() else None
    if base is not None and epath.Path(base).resolve() != epath.Path(trained.workdir).resolve():
        raise InputError(f"--expression-workdir {expression_workdir}: trained on the base run {base}, not "
                         f"--workdir {trained.workdir}")
    model = load_expression(expression_workdir, trained=trained)[0]
    return model, trained.model


def _driving_frames(args):
    """The --drive captures (None with --blendshapes), with the flags that go with --drive checked."""
    from headsup_jax.errors import InputError

    if args.drive is None:
        given = [f for f, v in (("--regressor-workdir", args.regressor_workdir),
                                ("--save-blendshapes", args.save_blendshapes)) if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)} go with --drive (driving images), not --blendshapes")
        return None
    if args.regressor_workdir is None:
        raise InputError("--drive needs --regressor-workdir DIR (a run of configs/regressor.py)")
    if args.save_blendshapes is not None and not args.save_blendshapes.lower().endswith(".json"):
        raise InputError(f"--save-blendshapes {args.save_blendshapes}: expected a .json file")
    from headsup_jax.infer.drive import driving_frames

    return driving_frames(args.drive)


def _driven_coefficients(args, frames, template):
    """Coefficients [F, E] of the --drive frames by the --regressor-workdir model (and --save-blendshapes)."""
    from headsup_jax.infer.drive import drive_coefficients, write_animation
    from headsup_jax.train.regressor import load_regressor

    regressor = load_regressor(args.regressor_workdir)
    coefficients = drive_coefficients(regressor, frames, template)
    print(f"regressed {len(frames)} frames of {args.drive} (regressor step {regressor.step})")
    if args.save_blendshapes is not None:
        write_animation(args.save_blendshapes, coefficients, template.expression_names)
        print(f"wrote {args.save_blendshapes}: {len(frames)} frames of {len(template.expression_names)} coefficients")
    return coefficients


def run_animate(args) -> None:
    import pathlib

    from headsup_jax.infer import animate, render
    from headsup_jax.infer.blendshape_files import read_animation

    method = animate.method_function(args.method)  # before minutes of loading
    if not args.out.lower().endswith(".mp4"):
        from headsup_jax.errors import InputError

        raise InputError(f"--out {args.out}: expected an .mp4 file")
    if args.method == "latent" and args.head is not None:
        from headsup_jax.infer.animate import HeadFileError

        raise HeadFileError(f"--head {args.head}: --method latent needs the head's latent Z, which a PLY does not "
                            "hold; give --workdir and --capture (reconstructed by the expression model's base)")
    if args.method == "latent" and args.expression_workdir is None:
        from headsup_jax.errors import InputError

        raise InputError("--method latent needs --expression-workdir DIR (a run of configs/expression.py)")
    driving = _driving_frames(args)  # before minutes of loading
    head, trained = _animation_head(args)
    if args.method == "latent":
        import functools

        method = functools.partial(method, expression=_expression_model(args.expression_workdir, trained))
    if driving is None:
        animation = read_animation(args.blendshapes, head.template)
        if animation.ignored:
            print(f"{args.blendshapes}: ignored {', '.join(animation.ignored)}")
        coefficients = animation.coefficients
    else:
        coefficients = _driven_coefficients(args, driving, head.template)
    F = len(coefficients)
    cameras = animate.frame_cameras(args.cameras, args.resolution, F)
    background = [float(v) for v in args.background.split(",")]
    folder = None if args.ply_sequence is None else pathlib.Path(args.ply_sequence)
    frames = animate.animation_frames(head, coefficients, method)
    render.write_video(animate.render_frames(frames, cameras, background, args.backend, folder), args.out, args.fps)
    print(f"wrote {args.out}: {F} frames {cameras[0].width}x{cameras[0].height} at {args.fps} fps "
          f"({args.method}, {args.cameras})" + (f"; {F} PLYs in {folder}/" if folder else ""))


def register_render(sub) -> None:
    """`headsup render`: the renderer's own `demo` and the commands for files and trained models."""
    from headsup_jax.render import cli as render_cli

    render_cli.register(sub)
    add_render_views(sub.add_parser("views", help="render a .ply/.splat file from a rig, a turntable or a "
                                    "capture's cameras to PNGs or an mp4"))
    add_render_compare(sub.add_parser("compare", help="reconstruct a capture and render its non-input views "
                                      "beside the ground truth (grid PNG, per-view PSNR)"))


def add_render_views(parser) -> None:
    parser.add_argument("file", help="head.ply or head.splat")
    parser.add_argument("--cameras", default="frontal16",
                        help="frontal16, dome80, turntable, or a capture folder (its cameras)")
    parser.add_argument("--out", required=True, help="a folder for PNGs, or video.mp4 (frames in camera order)")
    parser.add_argument("--resolution", type=int, help="image height in pixels (default: 256 for rigs, the "
                        "capture's own size for a capture)")
    parser.add_argument("--frames", type=int, default=60, help="turntable frames")
    parser.add_argument("--fps", type=int, default=30, help="video frames per second")
    parser.add_argument("--background", default="1,1,1", help="background colour R,G,B in [0, 1]")
    parser.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas"], help="rasteriser backend")
    parser.set_defaults(run=run_render_views)


def run_render_views(args) -> None:
    from headsup_jax.data.capture import load_capture
    from headsup_jax.export.checks import load_gaussians
    from headsup_jax.infer import render
    from headsup_jax.infer.reconstruct import load_views

    gaussians = load_gaussians(args.file)
    background = [float(v) for v in args.background.split(",")]
    if args.cameras in render.RIGS:
        cameras = render.rig_cameras(args.cameras, args.resolution or 256, args.frames)
        names = [f"{args.cameras}_{i:03d}" for i in range(len(cameras))]
    else:
        capture = load_capture(args.cameras)
        views = load_views(capture, range(len(capture.cameras)), args.resolution)
        cameras, names = [v.camera for v in views], [v.camera_id for v in views]
    images = render.render_images(gaussians, cameras, background, args.backend)
    if args.out.lower().endswith(".mp4"):
        render.write_video(images, args.out, args.fps)
        print(f"wrote {args.out}: {len(images)} frames {images[0].shape[1]}x{images[0].shape[0]} at {args.fps} fps")
    else:
        render.write_pngs(images, names, args.out)
        print(f"wrote {len(images)} PNGs to {args.out}/ ({gaussians.count} Gaussians)")


def add_render_compare(parser) -> None:
    _model_options(parser)
    parser.add_argument("--out", required=True, help="grid PNG; per-view PSNR also goes to the same name .json")
    parser.add_argument("--resolution", type=int, help="image height of the comparison (default: the capture's)")
    parser.set_defaults(run=run_render_compare)


def run_render_compare(args) -> None:
    from headsup_jax.fileio import write_json_atomic
    from headsup_jax.infer.render import compare, write_png
    from headsup_jax.infer.trained import load_trained

    capture, views = _capture_and_views(args)
    result = compare(load_trained(args.workdir, args.step), capture, views, args.num_views, args.resolution)
    write_png(args.out, result.grid)
    table = dict(zip(result.camera_ids, result.psnr))
    json_path = args.out.rsplit(".", 1)[0] + ".json"
    write_json_atomic(json_path, {"inputs": result.input_ids, "psnr": table})
    for cid, value in table.items():
        print(f"{cid}: {value:.2f} dB")
    print(f"wrote {args.out} and {json_path}: {len(table)} held-out views, mean PSNR "
          f"{sum(result.psnr) / len(result.psnr):.2f} dB, inputs {','.join(result.input_ids)}")


def add_view(parser) -> None:
    parser.add_argument("file", help="head.ply or head.splat")
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (if taken, viser takes the next free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; another interface, "
                             "e.g. 0.0.0.0, serves the file to the network)")
    parser.set_defaults(run=run_view)


def run_view(args) -> None:
    from headsup_jax.infer.view import serve

    serve(args.file, args.host, args.port)


def register_export(sub) -> None:
    """`headsup export torch`: a trained model as one safetensors file for the PyTorch mirror."""
    parser = sub.add_parser("torch", help="write the model as model.safetensors (+ .json config) for "
                            "headsup_jax.export.torch_model, and check it against the JAX model")
    parser.add_argument("--workdir", required=True, help="the training run's folder (local or gs://)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--out", required=True, help="model.safetensors (its config also goes to model.json)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the forward pass of both models on random views (the strict load still runs)")
    parser.set_defaults(run=run_export_torch)


def run_export_torch(args) -> None:
    import time

    from headsup_jax.export import torch_export
    from headsup_jax.infer.trained import load_trained

    torch_export.require_torch()  # both before minutes of loading
    torch_export.output_path(args.out)
    trained = load_trained(args.workdir, args.step)
    start = time.perf_counter()
    path, side = torch_export.export_torch(trained.model, trained.config, args.out, trained.step)
    took = time.perf_counter() - start
    print(f"wrote {path} and {side}: step {trained.step}, {trained.model.num_gaussians} Gaussians ({took:.1f} s)")
    if args.check:
        errors = torch_export.check_export(trained.model, path, *torch_export.probe_inputs(trained.config))
        print(f"torch vs JAX ({trained.config.compute_dtype} compute in JAX), max relative error: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    else:
        from headsup_jax.export.torch_model import load_model

        load_model(path.read_bytes())
        print("loads into headsup_jax.export.torch_model.HeadsUp with strict=True")
