#!/usr/bin/env bash
# Template: train on a Cloud TPU VM pod slice. Runs `headsup train` on every worker of the slice;
# jax.distributed.initialize() finds the coordinator by itself on TPU VMs (see headsup_jax/train/cli.py).
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/xl launch/tpu_pod.sh --config configs/headsup.py:xl
#
# Assumes the repository is checked out at ~/headsup-jax on every worker with its .venv installed, TPU
# jaxlib included (e.g. by a previous `--command "git clone ... && cd headsup-jax && make .venv/.installed
# && .venv/bin/pip install -c constraints.txt -e '.[tpu]'"`), and a
# WORKDIR every worker can reach (a GCS bucket): checkpoints and the data state of every process go there.
# The batch size of the config is global; each process loads batch_size / num_processes.
# --require_accelerator: a worker whose JAX sees no TPU (no `.[tpu]` install) stops at once instead of training on CPU.
set -euo pipefail
: "${TPU:?set TPU (the TPU VM name)}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
REPO=${REPO:-~/headsup-jax}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO && .venv/bin/headsup train --require_accelerator --workdir=$WORKDIR$ARGS 2>&1 | tee -a /tmp/headsup_train.log"
