"""The `headsup` command. Each command group lives beside the code it drives and registers itself here."""
import argparse
import importlib
import sys

# group name -> module exposing `register(subparsers)`; imported only when needed (keeps --help fast).
COMMAND_GROUPS = {
    "render": "headsup_jax.render.cli",
    "template": "headsup_jax.geometry.cli",
    "data": "headsup_jax.data.cli",
    "lpips": "headsup_jax.model.lpips_cli",
}
# commands with absl flags of their own (`headsup train --config=... --config.x=y`): module exposing main(argv)
ABSL_COMMANDS = {
    "train": "headsup_jax.train.cli",
    "eval": "headsup_jax.train.cli",
}


def build_parser(groups=COMMAND_GROUPS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsup", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)
    for name in ABSL_COMMANDS:
        sub.add_parser(name, help=f"{name} (absl flags: headsup {name} --helpfull)")
    for name, module in groups.items():
        group = sub.add_parser(name, help=f"{name} commands")
        importlib.import_module(module).register(group.add_subparsers(dest="command", required=True))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ABSL_COMMANDS:
        return int(importlib.import_module(ABSL_COMMANDS[argv[0]]).main(argv) or 0)
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
