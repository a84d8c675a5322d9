"""Training data from the config: synthetic subjects generated on first use, or a built dataset.

Paths are etils.epath paths: a workdir or dataset may be a local folder or a bucket URI (gs://...)."""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time

import jax
import numpy as np
from etils import epath

from headsup_jax.data.pipeline import DataIterator, PipelineConfig, make_pipeline
from headsup_jax.data.views import ViewSpec
from headsup_jax.errors import ConfigError
from headsup_jax.fileio import write_text_atomic

log = logging.getLogger(__name__)

MODEL_KEYS = ("inputs", "input_cameras", "targets", "target_cameras", "target_masks", "has_masks")


def dataset_dir(config, workdir, sync: bool = False) -> epath.Path:
    """The TFDS dataset folder of `config.data.source`; synthetic data is generated and built once.

    `sync` (every process calls it, e.g. for the train iterator): process 0 generates the data while the
    others wait at a barrier; a process that still finds no data (a workdir on a host-local disk) then
    builds its own copy, which is identical (generated from config.seed)."""
    d = config.data
    if d.source != "synthetic":
        path = epath.Path(d.source)
        if not (path / "dataset_info.json").exists():
            from headsup_jax.data.capture import find_captures

            captures = "://" not in str(path) and path.is_dir() and find_captures(path)
            hint = (f"capture folders are built with `headsup data build {path} --out OUT`, then "
                    "data.source=OUT/head_captures/1.0.0" if captures else "give a built dataset's version folder")
            raise ConfigError(f"config data.source={path}: not a built TFDS dataset (no dataset_info.json); {hint}")
        return path
    root = epath.Path(workdir) / "data"
    done = root / "BUILT"
    if jax.process_index() == 0 and not done.exists():
        _generate(config, root)
    if sync and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("headsup_jax synthetic data")
        if not done.exists():
            _generate(config, root)
    if not done.exists():
        raise RuntimeError(f"process {jax.process_index()}: generate the synthetic data first "
                           f"(process 0 writes {done}; run it alone once, or point data.source at a dataset)")
    return epath.Path(done.read_text().strip())


def _generate(config, root: epath.Path) -> None:
    """Generates config.data.synthetic_subjects subjects and builds their TFDS dataset under `root`.
    Says what it does and, after the first subject, how long the rest will take. The capture folders
    stay under root/captures for a local root; for a bucket they are staged on local disk and removed."""
    from headsup_jax.data.synth import SynthConfig, generate
    from headsup_jax.data.tfds_builder import build_dataset
    from headsup_jax.train.workdir import resolve_template

    d = config.data
    n = d.synthetic_subjects
    workers = d.get("synthetic_workers", 1) or os.cpu_count() or 1
    synth = SynthConfig(rig=d.rig, resolution=max(d.image_size[0], 64), seed=config.seed,
                        template=resolve_template(config).template)
    remote = "://" in str(root)
    captures = epath.Path(tempfile.mkdtemp(prefix="headsup_synth_")) if remote else root / "captures"
    log.info("first run: generating %d synthetic subjects (%s template, %s rig, %d px, %d worker(s)) into %s, "
             "then building the dataset in %s", n, synth.template, synth.rig, synth.resolution, workers, captures,
             root / "tfds")
    t0 = time.perf_counter()
    generate(captures, 1, synth, workers=1, progress=False)
    per_subject = time.perf_counter() - t0
    if n > 1:
        log.info("the first subject took %.1f s (set-up included): about %s for the other %d with %d worker(s)",
                 per_subject, _duration(per_subject * (n - 1) / workers), n - 1, workers)
        generate(captures, n - 1, synth, workers=workers, start=1)
    path = build_dataset(captures, root / "tfds", split_seed=config.seed)
    write_text_atomic(root / "BUILT", str(path))
    if remote:
        shutil.rmtree(captures)
    log.info("synthetic data ready in %s (%s)", path, _duration(time.perf_counter() - t0))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds > 5400 else f"{math.ceil(seconds / 60)} min"


def split_sizes(dataset) -> dict[str, int]:
    """Examples per split of a built dataset."""
    import tensorflow_datasets as tfds

    return {name: info.num_examples for name, info in tfds.builder_from_directory(str(dataset)).info.splits.items()}


def held_out_split(dataset) -> str | None:
    """The split the train loop logs renders of: validation, else test, else None (neither exists)."""
    sizes = split_sizes(dataset)
    return next((s for s in ("validation", "test") if sizes.get(s, 0) > 0), None)


def view_spec(config, num_targets: int | None = None) -> ViewSpec:
    d = config.data
    return ViewSpec(num_inputs=d.num_inputs, num_targets=num_targets or d.num_targets, height=d.image_size[0],
                    width=d.image_size[1])


def train_iterator(config, dataset, seed: int | None = None, start: int = 0) -> DataIterator:
    """This process's batch iterator over the train split of `dataset` (batch_size is per process);
    `start` skips records of this process's sequence (see `resume_position`)."""
    d = config.data
    if d.batch_size % jax.process_count():
        raise ConfigError(f"data.batch_size {d.batch_size} is not divisible by {jax.process_count()} processes")
    pipeline = PipelineConfig(batch_size=d.batch_size // jax.process_count(), views=view_spec(config),
                              worker_count=d.workers, fail_fast=not d.skip_bad_records)
    return make_pipeline(train_source(config, dataset), pipeline, seed=config.seed if seed is None else seed,
                         start=start)


def train_source(config, dataset):
    """The train split of `dataset`, cut to its first config.data.max_train_subjects records when that is > 0
    (one record per subject for synthetic data): an identity sweep's runs read nested subsets of one dataset."""
    from headsup_jax.data.tfds_builder import load_source

    source = load_source(dataset, "train")
    k = config.data.get("max_train_subjects", 0)
    if k <= 0:
        return source
    if k > len(source):
        raise ConfigError(f"data.max_train_subjects {k} exceeds the {len(source)} train records of {dataset}")
    return _FirstRecords(source, k)


class _FirstRecords:
    """The first `count` records of a random-access source."""

    def __init__(self, source, count: int):
        self.source, self.count = source, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self.source[i % self.count]


def resume_position(records: list[dict], where: str) -> tuple[int, dict | None]:
    """Where this process's data continues, from the data records a checkpoint holds (one per process of
    the run that saved it, see Checkpointer.data_states) -> (start, state to set or None).

    Same process count: this process's own state (the exact next batch). Another count: the data is
    resharded deterministically: every process starts its own shard's sequence at (records read by all
    processes of the saved run) // process_count, so the run has seen as much data as before; a warning
    says so. Records missing for some processes (a workdir on host-local disks) are an error."""
    n, i = jax.process_count(), jax.process_index()
    if not records:
        raise FileNotFoundError(f"{where}: no data state saved with this checkpoint; delete the checkpoint or "
                                "the workdir to restart")
    saved = records[0]["process_count"]
    if [r["process_index"] for r in records] != list(range(saved)):
        raise FileNotFoundError(f"{where}: the run that saved it had {saved} processes but only the data states of "
                                f"processes {[r['process_index'] for r in records]} are readable here "
                                "(is the workdir on a disk every host shares?)")
    if saved == n:
        state = records[i]["data"]
        return state.get("start", 0), state
    read = sum(r["data"].get("start", 0) + r["data"].get("read", 0) for r in records)
    log.warning("%s was saved by %d process(es), this run has %d: resharding the data position "
                "(%d records read in all; each process starts %d records into its shard)", where, saved, n,
                read, read // n)
    return read // n, None


def model_inputs(batch: dict) -> dict:
    """The arrays the train step consumes (drops the subject names). Without "has_masks" (a hand-made
    batch) the objective takes every record to have masks."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def require_masks(batch: dict, config) -> None:
    """Raises ConfigError naming the subjects of a batch that have no masks when the background model is
    off: their targets cannot be composited on the backdrop and the mask loss would pull alpha to 1."""
    if config.background.enabled:
        return
    missing = sorted({s.decode() if isinstance(s, bytes) else str(s)
                      for s, has in zip(batch["subject"], batch["has_masks"]) if not has})
    if missing:
        raise ConfigError(f"subjects {missing} have no masks/ folder: with config.background.enabled=False "
                         "training needs a mask per camera; add masks or set config.background.enabled=True")


def eval_source(config, workdir, split: str, data=None):
    """Records to evaluate: `split` of the run's dataset, of a built dataset folder `data`, or every capture
    of a capture folder `data` (validated as `headsup data validate` does) -> (source, name)."""
    from headsup_jax.data.capture import find_captures, load_capture
    from headsup_jax.data.tfds_builder import capture_example, load_source

    if data is None:
        return load_source(dataset_dir(config, workdir), split), split
    root = epath.Path(data)
    if (root / "dataset_info.json").exists():
        return load_source(root, split), f"{root.name}_{split}"
    captures = find_captures(root)
    if not captures:
        raise ConfigError(f"{root}: neither a built dataset (dataset_info.json) nor a folder of captures (cameras.json)")
    return [capture_example(load_capture(path, subject, frame)) for subject, frame, path in captures], root.name


def eval_batches(config, source, num_subjects: int, num_targets: int, batch_size: int | None = None):
    """Deterministic batches (of config.data.batch_size) of the first `num_subjects` records of `source`
    (see `eval_source`), each whole on every process; a record's views do not depend on the batch size."""
    import grain

    n = min(num_subjects, len(source))
    pipeline = PipelineConfig(batch_size=1, views=view_spec(config, num_targets), shuffle=False, num_epochs=1)
    it = make_pipeline(source, pipeline, seed=12345, shard_options=grain.sharding.NoSharding())
    size = batch_size or config.data.batch_size
    for first in range(0, n, size):
        records = [next(it) for _ in range(min(size, n - first))]  # each [1, ...]
        yield jax.tree.map(lambda *x: np.concatenate(x), *records)
