"""`headsup data ...`: validate capture folders (more commands: synth, build, inspect)."""
from __future__ import annotations


def register(sub) -> None:
    validate = sub.add_parser("validate", help="check every capture folder under DIR; non-zero exit on problems")
    validate.add_argument("dir")
    validate.set_defaults(run=run_validate)


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
