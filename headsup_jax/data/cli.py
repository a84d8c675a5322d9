"""`headsup data ...`: validate capture folders, build TFDS/ArrayRecord shards."""
from __future__ import annotations


def register(sub) -> None:
    validate = sub.add_parser("validate", help="check every capture folder under DIR; non-zero exit on problems")
    validate.add_argument("dir")
    validate.set_defaults(run=run_validate)

    build = sub.add_parser("build", help="turn capture folders into TFDS ArrayRecord shards (splits by subject)")
    build.add_argument("dir", help="folder of capture folders")
    build.add_argument("--out", required=True, help="TFDS data_dir; the dataset goes to OUT/head_captures/1.0.0")
    build.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    build.add_argument("--validation", type=float, default=0.1)
    build.add_argument("--test", type=float, default=0.1)
    build.add_argument("--skip-invalid", action="store_true", help="skip bad captures (listed in the info)")
    build.set_defaults(run=run_build)


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
