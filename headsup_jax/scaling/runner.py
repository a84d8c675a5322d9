"""Running a sweep: locally in sequence (resuming, skipping finished runs), or as job files for clusters.

Local layout: OUT/data (the shared synthetic dataset, generated once unless the sweep names one),
OUT/RUN (a normal training workdir, then eval_test.json, train_final.json and run.json when finished),
OUT/costs.json (each distinct model's parameters and FLOPs per example, lowered once per sweep folder),
OUT/jax_cache (a persistent compilation cache, unless one is set: runs of one model compile once).
"""
from __future__ import annotations

import json
import logging
import shlex
import time

from etils import epath

from headsup_jax.fileio import write_json_atomic, write_text_atomic
from headsup_jax.scaling.sweep import Run, plan

log = logging.getLogger(__name__)
METRICS = ("psnr", "ssim", "lpips", "psnr_head", "ssim_head")


def shared_dataset(sweep, out) -> str:
    """The built dataset every run of `sweep` reads: the sweep's data.source, else synthetic subjects
    generated once into OUT/data (from the base config's seed, template and image size)."""
    if sweep.data.source:
        return sweep.data.source
    from headsup_jax.scaling.sweep import run_config
    from headsup_jax.train.data import dataset_dir

    config = run_config(sweep, {})
    config.data.synthetic_subjects = sweep.data.synthetic_subjects
    return str(dataset_dir(config, out))


def _train(run: Run, workdir: epath.Path) -> dict:
    """Trains `run` in `workdir` (resuming its checkpoint) -> {"final": last metrics, "wall_s"}, kept in
    workdir/train_final.json so that a run interrupted during its eval is not trained again."""
    from headsup_jax.train.loop import train

    final = workdir / "train_final.json"
    if not final.exists():
        t0 = time.perf_counter()
        write_json_atomic(final, {"final": train(run.config, workdir, progress=False),
                                  "wall_s": time.perf_counter() - t0})
    return json.loads(final.read_text())


def execute(sweep, out, eval_split: str | None = None, progress: bool = True) -> list[dict]:
    """Runs every run of `sweep` in OUT/RUN_NAME in sequence -> their run.json contents. A run with a
    run.json is skipped; an interrupted one resumes from its checkpoint (the train loop's own resume)."""
    import jax
    from tqdm import tqdm

    from headsup_jax.eval.evaluate import evaluate
    from headsup_jax.train.data import split_sizes

    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not jax.config.jax_compilation_cache_dir:  # runs of one model (the identities axis) compile once
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))

    dataset = shared_dataset(sweep, out)
    runs = plan(sweep, dataset, progress=progress, cost_file=out / "costs.json")
    train_records = split_sizes(dataset)["train"]
    results = []
    bar = tqdm(runs, desc=f"sweep {sweep.name}", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix(run=run.name)
        workdir, done = out / run.name, out / run.name / "run.json"
        if done.exists():
            log.info("%s: finished (%s), skipped", run.name, done)
            results.append(json.loads(done.read_text()))
            continue
        trained = _train(run, workdir)
        t0 = time.perf_counter()
        e = sweep.eval
        summary = evaluate(run.config, workdir, eval_split or e.split, e.subjects, e.targets)
        record = {**run.summary(), "axes": _axes(run), "views": run.config.data.num_inputs,
                  "train_subjects": run.config.data.max_train_subjects or train_records,
                  "final_train_loss": trained["final"].get("loss"),
                  "train": trained["final"], "held_out": {k: summary[k] for k in METRICS if k in summary},
                  "held_out_subjects": summary["subjects"], "split": summary["split"],
                  "wall_s": trained["wall_s"] + time.perf_counter() - t0}
        write_json_atomic(done, record)
        results.append(record)
    return results


def _axes(run: Run) -> dict:
    from headsup_jax.scaling.sweep import axis_values

    return axis_values(run.overrides, run.params)


# ------------------------------------------------------------------------------------------------------
# Job files: one job per run, the same `headsup train` + `headsup eval` a local run does.


def run_flags(run: Run, base: str, shared: dict) -> list[str]:
    """`headsup train` arguments of a run: --config BASE and one --config.KEY=VALUE per override."""
    flags = [f"--config={base}"]
    for key, value in {**shared, **run.overrides}.items():
        value = tuple(value) if isinstance(value, list) else value
        flags.append(f"--config.{key}={value}")
    return flags


def _eval_flags(sweep) -> str:
    e = sweep.eval
    return f"--split={e.split} --subjects={e.subjects} --targets={e.targets}"


def _shared(sweep) -> dict:
    return {**dict(sweep.shared), "data.rig": sweep.data.rig}


def slurm_script(sweep, runs: list[Run], out: str) -> str:
    """A SLURM array job: array index i trains and evaluates run i in OUT/RUN_NAME on the dataset $DATA."""
    cases = "\n".join(f"  {i}) NAME={shlex.quote(r.name)}; FLAGS=({' '.join(shlex.quote(f) for f in run_flags(r, sweep.base, _shared(sweep)))}) ;;"
                      for i, r in enumerate(runs))
    return f"""#!/bin/bash
# Sweep {sweep.name}: {len(runs)} runs, one SLURM array index each (written by `headsup sweep run --emit slurm`).
#   DATA=/path/to/built/dataset sbatch {{this file}}     (every run reads the same dataset and test identities)
#SBATCH --job-name=headsup-{sweep.name}
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --output={out}/slurm-%A_%a.log
set -euo pipefail
: "${{DATA:={sweep.data.source}}}"
: "${{DATA:?set DATA to the built dataset folder of the sweep (headsup data build)}}"
OUT={shlex.quote(str(out))}
case "$SLURM_ARRAY_TASK_ID" in
{cases}
  *) echo "no run for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
srun headsup train "${{FLAGS[@]}}" --config.data.source="$DATA" --workdir="$OUT/$NAME"
srun headsup eval --workdir="$OUT/$NAME" {_eval_flags(sweep)}
"""


def tpu_script(sweep, runs: list[Run], out: str) -> str:
    """One TPU queued resource per run: created, awaited, then launch/tpu_pod.sh installs the repository on
    its workers and trains the run; `headsup eval` follows on every worker of it."""
    blocks = []
    for r in runs:
        node = f"headsup-{sweep.name}-{r.name}".replace("_", "-").lower()
        flags = " ".join(shlex.quote(f) for f in run_flags(r, sweep.base, _shared(sweep)))
        evaluate = (f"cd ~/headsup-jax-$REF && .venv/bin/headsup eval --workdir=$OUT/{r.name} {_eval_flags(sweep)}")
        blocks.append(f"""# run {r.name}
gcloud compute tpus queued-resources create {node} --node-id={node} "${{PROJECT_FLAG[@]}}" --zone="$ZONE" \\
  --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME"
until [ "$(gcloud compute tpus queued-resources describe {node} "${{PROJECT_FLAG[@]}}" --zone="$ZONE" --format='value(state.state)')" = ACTIVE ]; do sleep 30; done
TPU={node} WORKDIR="$OUT/{r.name}" "$REPO_DIR/launch/tpu_pod.sh" {flags} --config.data.source="$DATA"
gcloud compute tpus tpu-vm ssh {node} "${{PROJECT_FLAG[@]}}" --zone="$ZONE" --worker=all --command="{evaluate}"
""")
    return f"""#!/bin/bash
# Sweep {sweep.name}: {len(runs)} runs, one TPU queued resource each (written by `headsup sweep run --emit tpu`).
#   ZONE=... ACCELERATOR=v5litepod-8 RUNTIME=... [PROJECT=...] [REPO_URL=... REF=...] DATA=gs://bucket/dataset \\
#   OUT=gs://bucket/sweep bash {{this file}}      (run from the repository: launch/tpu_pod.sh installs it)
set -euo pipefail
: "${{ZONE:?}}" "${{ACCELERATOR:?}}" "${{RUNTIME:?}}"
: "${{OUT:={out}}}"
: "${{DATA:={sweep.data.source}}}"
: "${{DATA:?set DATA to the built dataset folder of the sweep (a gs:// path)}}"
REPO_DIR=$(git rev-parse --show-toplevel)
PROJECT_FLAG=(); [ -n "${{PROJECT:-}}" ] && PROJECT_FLAG=(--project="$PROJECT")
# the folder launch/tpu_pod.sh installs into on the workers: ~/headsup-jax-REF
if [ -n "${{REPO_URL:-}}" ]; then export REF=${{REF:-main}}; else REF=$(git -C "$REPO_DIR" rev-parse --short=12 HEAD); fi
""" + "\n".join(blocks)


def emit(sweep, kind: str, folder, out: str) -> epath.Path:
    """Writes FOLDER/sweep_NAME.{sbatch,sh} with one job per run (kind slurm | tpu) -> its path."""
    runs = plan(sweep, sweep.data.source or None)
    folder = epath.Path(folder)
    path = folder / f"sweep_{sweep.name}.{'sbatch' if kind == 'slurm' else 'sh'}"
    write_text_atomic(path, (slurm_script if kind == "slurm" else tpu_script)(sweep, runs, out))
    return path
