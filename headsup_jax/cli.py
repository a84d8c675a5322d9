"""The `headsup` command. Each command group lives beside the code it drives and registers itself here.

Input errors (`headsup_jax.errors.InputError`, a missing file) print one line `headsup: error: ...` and exit 2,
as argparse does for bad arguments; anything else is a bug and keeps its traceback.
"""
import argparse
import importlib
import sys

from headsup_jax.errors import InputError

DESCRIPTION = """\
headsup-jax: feed-forward 3D Gaussian heads from calibrated multi-view captures (HeadsUp, in JAX).
Train a model on capture folders or synthetic subjects, evaluate it on held-out identities, and
prepare or inspect the data and head templates it needs."""
EPILOG = "Run `headsup COMMAND --help` for a command's options (`headsup train --helpfull` for train/eval)."
# group name -> (module exposing `register(subparsers)`, or "module:function", one-line help)
COMMAND_GROUPS = {
    "render": ("headsup_jax.infer.cli:register_render",
               "render Gaussian files or a reconstruction (views, turntables, vs ground truth) and demo scenes"),
    "template": ("headsup_jax.geometry.cli", "look at a head template, its UV atlas and anchored Gaussians"),
    "data": ("headsup_jax.data.cli", "validate, build, generate and inspect capture data"),
    "lpips": ("headsup_jax.model.lpips_cli", "convert LPIPS (VGG16) weights for the perceptual loss"),
    "export": ("headsup_jax.infer.cli:register_export", "write a trained model for PyTorch (safetensors + config)"),
    "sweep": ("headsup_jax.scaling.cli", "scaling sweeps: plan, run (or emit cluster jobs), collect, report"),
}
# commands without subcommands: name -> ("module:function" adding the arguments to its parser, one-line help)
COMMANDS = {
    "reconstruct": ("headsup_jax.infer.cli:add_reconstruct",
                    "turn a capture into a .ply/.splat head with a trained model (one forward pass)"),
    "fit": ("headsup_jax.infer.cli:add_fit",
            "fit a capture's head by per-subject optimisation, from the template or a trained model (--init)"),
    "animate": ("headsup_jax.infer.cli:add_animate",
                "animate a reconstructed head with ARKit blendshapes (a JSON/CSV file) to an mp4 and PLYs"),
    "view": ("headsup_jax.infer.cli:add_view", "look at a .ply/.splat head in the browser (viser, localhost)"),
    "plan-memory": ("headsup_jax.scaling.memory_cli:add_plan_memory",
                    "per-device memory, FLOPs and step time of a config's train step on D devices, before launching"),
}
# commands with absl flags of their own (`headsup train --config=... --config.x=y`): module exposing main(argv)
ABSL_COMMANDS = {
    "train": ("headsup_jax.train.cli", "train a model from a config file (absl flags: headsup train --helpfull)"),
    "eval": ("headsup_jax.train.cli", "evaluate a trained run on held-out subjects (absl flags: --helpfull)"),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps long command names (`reconstruct`) on their help's line: argparse measures sub-commands
    before indenting them, two columns short."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length = max(self._action_max_length, max(map(len, action.choices), default=0) + 4)


def _function(target: str, default: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name or default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsup", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name, (_, help_text) in ABSL_COMMANDS.items():
        sub.add_parser(name, help=help_text)
    for name, (target, help_text) in COMMAND_GROUPS.items():
        group = sub.add_parser(name, help=help_text, description=help_text)
        _function(target, "register")(group.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for name, (target, help_text) in COMMANDS.items():
        _function(target, "")(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in ABSL_COMMANDS:
            return int(importlib.import_module(ABSL_COMMANDS[argv[0]][0]).main(argv) or 0)
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except (InputError, FileNotFoundError) as e:
        message = " ".join(str(e).splitlines())
        print(f"headsup: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
