"""`headsup train` and `headsup eval`: absl flags with an ml_collections config file.

    headsup train --config configs/headsup.py:tiny --workdir runs/tiny [--config.optim.lr=1e-4 ...]
    headsup eval --workdir runs/tiny            # the config saved in the workdir
Multi-host: `jax.distributed.initialize()` is automatic on TPU pods and SLURM; locally pass
--coordinator=HOST:PORT --num_processes=N --process_id=I.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import ConfigDict, config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/headsup.py:tiny", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder: checkpoints, TensorBoard logs, renders", required=True)
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 for a local multi-process run")
flags.DEFINE_integer("num_processes", None, "processes in a local multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a local multi-process run")
flags.DEFINE_string("split", "test", "eval: split to evaluate")
flags.DEFINE_integer("subjects", 16, "eval: held-out subjects to evaluate")


def _init_distributed() -> None:
    import jax

    if FLAGS.coordinator:
        # CPU collectives between local processes (no effect on accelerators; set before any backend starts)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    elif _on_cluster():
        jax.distributed.initialize()


def _on_cluster() -> bool:
    import os

    return any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def _config_for(workdir: pathlib.Path) -> ConfigDict:
    """The --config if given (overrides applied), else the one saved in the workdir."""
    if _CONFIG.value is not None:
        return _CONFIG.value
    saved = workdir / "config.json"
    if not saved.exists():
        raise app.UsageError(f"no --config given and no {saved}: start a run with --config")
    return ConfigDict(json.loads(saved.read_text()))


def _run(argv) -> None:
    import logging

    command = argv[1] if len(argv) > 1 else ""
    logging.basicConfig(level=logging.INFO)
    _init_distributed()
    workdir = pathlib.Path(FLAGS.workdir)
    config = _config_for(workdir)
    if command == "train":
        from headsup_jax.train.loop import train

        metrics = train(config, workdir)
        print(json.dumps({"final": metrics}, indent=2))
    else:
        from headsup_jax.train.evaluate import evaluate

        summary = evaluate(config, workdir, FLAGS.split, FLAGS.subjects)
        print(json.dumps({k: v for k, v in summary.items() if k != "per_subject"}, indent=2))


def main(argv) -> int:
    app.run(_run, argv=["headsup"] + list(argv))
    return 0
