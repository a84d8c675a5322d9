"""Training data from the config: synthetic subjects generated on first use, or a built dataset."""
from __future__ import annotations

import pathlib

import jax

from headsup_jax.data.pipeline import PipelineConfig, make_pipeline
from headsup_jax.data.views import ViewSpec

def template_spec(config) -> str:
    """config.template, with "auto" resolved: the ICT-FaceKit archive when present, else procedural."""
    if config.template != "auto":
        return config.template
    from headsup_jax.geometry.loaders import ict_path

    return "ict" if ict_path().exists() else "procedural"


MODEL_KEYS = ("inputs", "input_cameras", "targets", "target_cameras", "target_masks", "has_masks")


def dataset_dir(config, workdir, sync: bool = False) -> pathlib.Path:
    """The TFDS dataset folder of `config.data.source`; synthetic data is generated and built once.

    `sync` (every process calls it, e.g. for the train iterator): process 0 generates the data while the
    others wait at a barrier; a process that still finds no data (a workdir on a host-local disk) then
    builds its own copy, which is identical (generated from config.seed)."""
    d = config.data
    if d.source != "synthetic":
        return pathlib.Path(d.source)
    root = pathlib.Path(workdir) / "data"
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
    return pathlib.Path(done.read_text())


def _generate(config, root: pathlib.Path) -> None:
    from headsup_jax.data.synth import SynthConfig, generate
    from headsup_jax.data.tfds_builder import build_dataset

    d = config.data
    height = max(d.image_size[0], 64)
    generate(root / "captures", d.synthetic_subjects,
             SynthConfig(rig=d.rig, resolution=height, seed=config.seed, template=template_spec(config)),
             workers=max(d.workers, 1))
    path = build_dataset(root / "captures", root / "tfds", split_seed=config.seed)
    (root / "BUILT").write_text(str(path))


def view_spec(config, num_targets: int | None = None) -> ViewSpec:
    d = config.data
    return ViewSpec(num_inputs=d.num_inputs, num_targets=num_targets or d.num_targets, height=d.image_size[0],
                    width=d.image_size[1])


def train_iterator(config, workdir, seed: int | None = None):
    """This process's batch iterator over the train split (batch_size is per process)."""
    from headsup_jax.data.tfds_builder import load_source

    d = config.data
    if d.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size {d.batch_size} is not divisible by {jax.process_count()} processes")
    pipeline = PipelineConfig(batch_size=d.batch_size // jax.process_count(), views=view_spec(config),
                              worker_count=d.workers, fail_fast=not d.skip_bad_records)
    source = load_source(dataset_dir(config, workdir, sync=True), "train")
    return make_pipeline(source, pipeline, seed=config.seed if seed is None else seed)


def model_inputs(batch: dict) -> dict:
    """The arrays the train step consumes (drops the subject names). Without "has_masks" (a hand-made
    batch) the objective takes every record to have masks."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def require_masks(batch: dict, config) -> None:
    """Raises ValueError naming the subjects of a batch that have no masks when the background model is
    off: their targets cannot be composited on the backdrop and the mask loss would pull alpha to 1."""
    if config.background.enabled:
        return
    missing = sorted({s.decode() if isinstance(s, bytes) else str(s)
                      for s, has in zip(batch["subject"], batch["has_masks"]) if not has})
    if missing:
        raise ValueError(f"subjects {missing} have no masks/ folder: with config.background.enabled=False "
                         "training needs a mask per camera; add masks or set config.background.enabled=True")


def eval_batch(config, workdir, split: str, num_subjects: int, num_targets: int) -> dict:
    """One deterministic batch of the first `num_subjects` subjects of a split (all on this process)."""
    import grain

    from headsup_jax.data.tfds_builder import load_source

    source = load_source(dataset_dir(config, workdir), split)
    n = min(num_subjects, len(source))
    pipeline = PipelineConfig(batch_size=n, views=view_spec(config, num_targets), shuffle=False, num_epochs=1)
    it = make_pipeline(source, pipeline, seed=12345, shard_options=grain.sharding.NoSharding())
    return next(it)
