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


def build_parser(groups=COMMAND_GROUPS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsup", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)
    for name, module in groups.items():
        group = sub.add_parser(name, help=f"{name} commands")
        importlib.import_module(module).register(group.add_subparsers(dest="command", required=True))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
