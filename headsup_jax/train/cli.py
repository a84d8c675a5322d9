"""`headsup train` and `headsup eval`: absl flags with an ml_collections config file.

    headsup train --config configs/headsup.py:tiny --workdir runs/tiny [--config.optim.lr=1e-4 ...]
    headsup eval --workdir runs/tiny [--split test --subjects 16]   # the config saved in the workdir
    headsup eval --workdir runs/tiny --data OTHER_DATASET_OR_CAPTURES [--views 8]
    headsup train --config configs/expression.py:tiny --config.base=runs/tiny --config.data.source=DIR \
        --workdir runs/expr   # the latent expression model on the frozen run runs/tiny (train/expression.py)
    headsup train --config configs/regressor.py:tiny --config.data.source=DIR --workdir runs/regressor
        # the blendshape regressor (driving images -> coefficients, train/regressor.py)
Multi-host: `jax.distributed.initialize()` is automatic on TPU pods and SLURM; locally pass
--coordinator=HOST:PORT --num_processes=N --process_id=I. The launchers pass --require_accelerator.
Logging: headsup_jax at INFO, libraries at WARNING; `-v N` (absl --verbosity) sets every logger to N.
"""
from __future__ import annotations

import json
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from headsup_jax.errors import BackendError, ConfigError
from headsup_jax.train.workdir import workdir_path

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/headsup.py:tiny", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder: checkpoints, TensorBoard logs, renders", required=True)
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 for a local multi-process run")
flags.DEFINE_integer("num_processes", None, "processes in a local multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a local multi-process run")
flags.DEFINE_integer("heartbeat_timeout", 100, "multi-process runs: seconds without a process's heartbeat before the "
                     "others stop, naming it")
flags.DEFINE_bool("require_accelerator", False, "refuse to start when JAX's backend is the CPU (set by launch/)")
flags.DEFINE_string("split", "test", "eval only: split to evaluate")
flags.DEFINE_integer("subjects", 16, "eval only: held-out subjects to evaluate")
flags.DEFINE_string("data", None, "eval only: a built dataset (its --split) or a folder of captures, instead of the "
                    "run's own dataset")
flags.DEFINE_integer("views", None, "eval only: input views per subject (default: the config's data.num_inputs)")
flags.DEFINE_integer("targets", 4, "eval only: novel (non-input) views scored per subject")
EVAL_ONLY_FLAGS = ("split", "subjects", "data", "views", "targets")
OUR_LOGGER = "headsup_jax"


def setup_logging(verbosity: int | None) -> None:
    """Our loggers at INFO, every other (absl, so orbax, grain and tfds; jax) at WARNING; an absl `--verbosity N`
    given on the command line sets all of them to N's level (0 INFO, 1 DEBUG). absl's `--logger_levels` still
    sets single loggers."""
    from absl.logging import converter

    if verbosity is None:
        logging.root.setLevel(logging.WARNING)
        logging.getLogger(OUR_LOGGER).setLevel(logging.INFO)
    else:
        level = converter.absl_to_standard(verbosity) if verbosity <= 1 else logging.DEBUG - (verbosity - 1)
        logging.root.setLevel(level)
        logging.getLogger(OUR_LOGGER).setLevel(logging.NOTSET)


def check_backend(require_accelerator: bool) -> str:
    """The backend line the run logs first; raises BackendError on a CPU backend if an accelerator is required."""
    import jax

    backend = jax.default_backend()
    line = (f"backend={backend} devices={jax.device_count()} local={jax.local_device_count()} "
            f"processes={jax.process_count()}")
    if require_accelerator and backend == "cpu":
        raise BackendError(f"--require_accelerator: JAX found no accelerator ({line}); install jax for it "
                           "(pip install -e '.[tpu]' or '.[cuda12]') and check JAX_PLATFORMS")
    return line


def _init_distributed() -> None:
    import jax

    from headsup_jax.train import peers

    if FLAGS.coordinator:
        # CPU collectives between local processes (no effect on accelerators; set before any backend starts)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        peers.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout)
    elif _on_cluster():
        peers.initialize(heartbeat_timeout=FLAGS.heartbeat_timeout)


def _on_cluster() -> bool:
    import os

    return any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def _config_for(workdir) -> ConfigDict:
    """The --config if given (overrides applied), else the one saved in the workdir."""
    config = _CONFIG.value
    if config is not None:
        if not isinstance(config, ConfigDict):  # config_flags' _ErrorConfig: an IOError deferred to first use
            path = config_flags.get_config_filename(FLAGS["config"])
            problem = str(config._error).strip().splitlines()[-1] if pathlib.Path(path).is_file() else "no such file"
            raise ConfigError(f"--config: {path}: {problem}")
        return config
    saved = workdir / "config.json"
    if not saved.exists():
        raise ConfigError(f"no --config given and no {saved}: start a run with --config")
    return ConfigDict(json.loads(saved.read_text()))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with bad flags (a missing --workdir, an unloadable --config, a --config.x=y naming
    no field or with a bad value) as one-line ConfigErrors instead of absl's usage text or a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # config_flags puts a config file's own exception after its traceback: keep that line
        lines = str(e).strip().splitlines()
        flag = lines[0].partition(": Error whilst parsing config file")[0]
        raise ConfigError(lines[0] if len(lines) == 1 else f"{flag}: {lines[-1]}") from e
    except AttributeError as e:  # config_flags' "'lrr'\nDid you mean "lr" instead of "lrr"?" (escaped, quoted)
        text = str(e)
        text = text[1:-1] if len(text) > 1 and text[0] in "'\"" and text[-1] == text[0] else text
        raise ConfigError("--config: no field " + text.replace("\\n", " ").replace("\\'", "'")) from e


def _run(argv) -> None:
    command = argv[1] if len(argv) > 1 else ""
    setup_logging(FLAGS.verbosity if FLAGS["verbosity"].present else None)
    log = logging.getLogger(__name__)
    given = [f"--{name}" for name in EVAL_ONLY_FLAGS if FLAGS[name].present]
    if command == "train" and given:
        raise ConfigError(f"`headsup train` does not take {' or '.join(given)} (eval only)")
    _init_distributed()
    log.info(check_backend(FLAGS.require_accelerator))
    workdir = workdir_path(FLAGS.workdir)  # local or gs://...
    config = _config_for(workdir)
    if config.get("kind") == "expression":  # configs/expression.py: the latent expression model on a frozen run
        if command != "train":
            raise ConfigError(f"{workdir}: an expression model run; `headsup {command}` evaluates HeadsUp runs")
        from headsup_jax.train.expression import train_expression

        print(json.dumps({"final": train_expression(config, workdir)}, indent=2))
    elif config.get("kind") == "regressor":  # configs/regressor.py: driving images -> blendshape coefficients
        if command != "train":
            raise ConfigError(f"{workdir}: a blendshape regressor run; `headsup {command}` evaluates HeadsUp runs "
                              "(its held-out error is in heldout_error.json)")
        from headsup_jax.train.regressor import train_regressor

        print(json.dumps(train_regressor(config, workdir), indent=2))
    elif command == "train":
        from headsup_jax.train.loop import train

        metrics = train(config, workdir)
        print(json.dumps({"final": metrics}, indent=2))
    else:
        from headsup_jax.eval.evaluate import evaluate

        summary = evaluate(config, workdir, FLAGS.split, FLAGS.subjects, FLAGS.targets, FLAGS.data, FLAGS.views)
        print(json.dumps({k: v for k, v in summary.items() if k != "per_subject"}, indent=2))


def main(argv) -> int:
    if {"-h", "--help"} & set(argv):  # absl's --help would show the `headsup` script's (empty) docstring
        print(__doc__ + FLAGS.module_help(sys.modules[__name__]))
        return 0
    app.run(_run, argv=["headsup"] + list(argv), flags_parser=_parse_flags)
    return 0
