#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: install this repository on every worker, then run `headsup train` on all
# of them. jax.distributed.initialize() finds the coordinator by itself on TPU VMs (headsup_jax/train/cli.py).
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/xl launch/tpu_pod.sh [--dry-run] [--skip-install] \
#       --config configs/headsup.py:xl [headsup-train-flags...]
#
# Install (on every worker, into ~/headsup-jax-REF with its own .venv): by default a `git archive` of this
# checkout's HEAD (commit first: uncommitted changes are not in it) is copied with `gcloud compute tpus tpu-vm
# scp`; with REPO_URL (and REF, default main) the workers `git clone --depth 1` it instead. Then
# `pip install -c constraints.txt -e '.[tpu]'`. --skip-install reuses the install of the same REF.
# WORKDIR must be a bucket (gs://...): every worker writes its checkpoints (Orbax), data-iterator state and
# TensorBoard events there. The config's batch size is global; each process loads batch_size / num_processes.
# --require_accelerator: a worker whose JAX sees no TPU stops at once instead of training on CPU.
# --dry-run prints the environment and the command lines, and runs nothing.
# Environment: TPU, ZONE, WORKDIR (required); PROJECT (gcloud --project), REPO_URL, REF, PYTHON (python3.11).
set -euo pipefail
LAUNCHER=launch/tpu_pod.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$HERE/launch/common.sh"
DRY_RUN=0 SKIP_INSTALL=0
while [[ $# -gt 0 && ( "$1" == --dry-run || "$1" == --skip-install ) ]]; do
  [[ "$1" == --dry-run ]] && DRY_RUN=1 || SKIP_INSTALL=1
  shift
done
[[ -n "${TPU:-}" ]] || die "set TPU (the TPU VM name)"
[[ -n "${ZONE:-}" ]] || die "set ZONE (e.g. us-east5-a)"
[[ -n "${WORKDIR:-}" ]] || die "set WORKDIR (gs://BUCKET/PATH)"
[[ "$WORKDIR" == gs://?* ]] || die "WORKDIR must be a bucket path gs://BUCKET/PATH (every worker writes there), got '$WORKDIR'"
[[ -n "$(flag_value config "$@")" ]] || die "--config is required (e.g. --config configs/headsup.py:xl)"
[[ -z "$(flag_value workdir "$@")" ]] || die "give the workdir as WORKDIR=gs://..., not --workdir"
PYTHON=${PYTHON:-python3.11}
if [[ -n "${REPO_URL:-}" ]]; then
  REF=${REF:-main}
  [[ "$REF" =~ ^[A-Za-z0-9._/-]+$ ]] || die "REF must be a branch, tag or commit, got '$REF'"
else
  REF=$(git -C "$HERE" rev-parse --short=12 HEAD) || die "$HERE is not a git checkout (or set REPO_URL)"
  [[ -z "$(git -C "$HERE" status --porcelain --untracked-files=no)" ]] ||
    echo "$LAUNCHER: note: uncommitted changes in $HERE are not installed (HEAD $REF is)" >&2
fi
DIR="~/headsup-jax-${REF//\//-}"
ARCHIVE=/tmp/headsup-jax-$REF.tar.gz
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --worker=all ${PROJECT:+--project="$PROJECT"})

STEPS=()  # one command line (a quoted string) a step
if [[ $SKIP_INSTALL -eq 0 ]]; then
  if [[ -n "${REPO_URL:-}" ]]; then
    FETCH="rm -rf $DIR && git clone --depth 1 --branch $(quoted "$REF") $(quoted "$REPO_URL") $DIR"
  else
    STEPS+=("$(quoted git -C "$HERE" archive --format=tar.gz -o "$ARCHIVE" HEAD)")
    STEPS+=("$(quoted "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU:$ARCHIVE" "${WHERE[@]}")")
    FETCH="rm -rf $DIR && mkdir -p $DIR && tar -xzf $ARCHIVE -C $DIR"
  fi
  INSTALL="set -e; $FETCH && cd $DIR && $PYTHON -m venv .venv && .venv/bin/pip install -q -U pip"
  INSTALL+=" && .venv/bin/pip install -q -c constraints.txt -e \".[tpu]\""
  STEPS+=("$(quoted "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command="$INSTALL")")
fi
TRAIN="cd $DIR && PYTHONUNBUFFERED=1 .venv/bin/headsup train --require_accelerator --workdir=$(quoted "$WORKDIR") $(quoted "$@")"
TRAIN+=" 2>&1 | tee -a /tmp/headsup_train.log"
STEPS+=("$(quoted "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command="$TRAIN")")

if [[ $DRY_RUN -eq 1 ]]; then
  echo "# launch/tpu_pod.sh --dry-run: TPU $TPU in $ZONE, install $REF into $DIR on every worker; nothing is run"
  print_env TPU ZONE WORKDIR REF
  printf '%s\n' "${STEPS[@]}"
  exit 0
fi
need gcloud "install the Google Cloud CLI"
for step in "${STEPS[@]}"; do
  echo "+ $step" >&2
  eval "$step"
done
