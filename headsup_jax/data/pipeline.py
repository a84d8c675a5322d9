"""Grain input pipeline: records -> batches of input and supervision views, sharded per JAX process.

    it = make_pipeline(load_source(dataset_dir, "train"), PipelineConfig(batch_size=8), seed=0)
    batch = next(it)  # {inputs [B,N,H,W,3], input_cameras {K [B,N,3,3], world_to_cam [B,N,4,4]},
                      #  targets [B,M,H,W,3], target_cameras, target_masks [B,M,H,W], has_masks [B], subject [B]}
    state = it.get_state()  # JSON-able; a new pipeline with set_state(state) resumes on the next batch

Deterministic for a seed (shuffle per epoch, view choice per record). Bad records (decode failures,
invalid cameras, too few cameras, per-camera fields of mismatched lengths) are skipped, logged and
counted in `it.metrics`, or raise naming the subject, file and field with `fail_fast=True`. Decoding runs in Grain worker processes when `worker_count > 0`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging

import grain
import numpy as np

from headsup_jax.data.capture import CaptureError, Problem
from headsup_jax.data.views import ViewSpec, make_views

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int = 8
    views: ViewSpec = ViewSpec()
    input_bucket: tuple[int, ...] = ()  # if set, each batch keeps N views drawn from it (each <= num_inputs)
    num_epochs: int | None = None  # None repeats forever
    shuffle: bool = True
    worker_count: int = 0  # Grain worker processes (0: decode in this process's threads)
    worker_buffer_size: int = 2
    read_threads: int = 4
    fail_fast: bool = False  # raise CaptureError on the first bad record instead of skipping it


PER_CAMERA = ("camera_ids", "images", "masks", "K", "world_to_cam", "width", "height")  # one entry per camera


def _check_layout(record: dict) -> None:
    """Raises CaptureError unless every per-camera field holds one entry per camera id."""
    subject = record.get("subject", b"?")
    subject = subject.decode() if isinstance(subject, bytes) else str(subject)
    if "camera_ids" not in record:
        raise CaptureError(Problem(subject, "record", "camera_ids", "missing"))
    n = len(record["camera_ids"])
    for key in PER_CAMERA:
        if key not in record or len(record[key]) != n:
            got = "missing" if key not in record else f"{len(record[key])} entries"
            raise CaptureError(Problem(subject, "record", key, f"{got} for {n} cameras"))


def _process(record: dict, rng: np.random.Generator, spec: ViewSpec) -> dict:
    try:
        _check_layout(record)
        return make_views(record, spec, rng)
    except CaptureError as e:
        return {"_bad": dataclasses.asdict(e.problem)}


def _mark_flags_parsed(*_worker_index_and_count) -> None:
    """Grain's multiprocessing reads absl flags (in this process and in each fresh worker): without an absl
    `app.run` they raise UnparsedFlagAccessError unless marked parsed. Also Grain's `worker_init_fn`."""
    import absl.flags

    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()


def _stack(examples: list):
    first = examples[0]
    if isinstance(first, dict):
        return {k: _stack([e[k] for e in examples]) for k in first}
    return np.stack(examples)


class DataIterator:
    """Batches from a Grain iterator of processed records; skips and counts bad ones; state get/set."""

    def __init__(self, parent, config: PipelineConfig, seed: int, shard_size: int, start: int = 0):
        self._parent, self._config, self._seed, self._shard_size = parent, config, seed, shard_size
        self._start = start  # records of this shard's (shuffled, repeated) sequence skipped at creation
        self._counts = {"batches": 0, "examples": 0, "skipped": 0}
        self._read = 0  # records read since `start` (good and bad)
        self.recent_problems = collections.deque(maxlen=10)

    def __iter__(self):
        return self

    def _next_good(self) -> dict:
        for _ in range(self._shard_size):
            example = next(self._parent)
            self._read += 1
            if "_bad" not in example:
                return example
            problem = Problem(**example["_bad"])
            if self._config.fail_fast:
                raise CaptureError(problem)
            self._counts["skipped"] += 1
            self.recent_problems.append(problem)
            log.warning("skipping bad record: %s", problem)
        raise RuntimeError(f"{self._shard_size} bad records in a row: every record of this shard is bad "
                           f"(last: {self.recent_problems[-1]})")

    def __next__(self) -> dict:
        batch = _stack([self._next_good() for _ in range(self._config.batch_size)])
        if self._config.input_bucket:
            rng = np.random.default_rng([self._seed, self._counts["batches"]])
            n = int(rng.choice(self._config.input_bucket))
            batch["inputs"], batch["input_masks"] = batch["inputs"][:, :n], batch["input_masks"][:, :n]
            batch["input_cameras"] = {k: v[:, :n] for k, v in batch["input_cameras"].items()}
        self._counts["batches"] += 1
        self._counts["examples"] += self._config.batch_size
        return batch

    @property
    def metrics(self) -> dict:
        """{"batches", "examples", "skipped"} since the start (carried through get_state/set_state)."""
        return dict(self._counts)

    def get_state(self) -> dict:
        return {"grain": self._parent.get_state(), "counts": dict(self._counts), "start": self._start,
                "read": self._read}

    def set_state(self, state: dict) -> None:
        """Resumes from `get_state()` of an iterator made with the same config, seed, shard and start."""
        if state.get("start", 0) != self._start:
            raise ValueError(f"data state was saved by an iterator starting at record {state.get('start', 0)}, "
                             f"this one starts at {self._start}: make it with start={state.get('start', 0)}")
        self._parent.set_state(state["grain"])
        self._counts = dict(state["counts"])
        self._read = state.get("read", 0)


def make_pipeline(source, config: PipelineConfig, seed: int,
                  shard_options: grain.sharding.ShardOptions | None = None, start: int = 0) -> DataIterator:
    """A batch iterator over this process's shard of `source` (default: `ShardByJaxProcess`).

    `start` skips that many records of the shard's shuffled, repeated sequence (a data position carried
    over from a run on another number of processes)."""
    if any(n > config.views.num_inputs or n < 1 for n in config.input_bucket):
        raise ValueError(f"input_bucket {config.input_bucket} must lie in [1, {config.views.num_inputs}]")
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    ds = grain.MapDataset.source(source)
    end = len(ds) - len(ds) % shard.shard_count if shard.drop_remainder else len(ds)
    ds = ds[shard.shard_index:end:shard.shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard.shard_index} of {shard.shard_count} of a {len(source)}-record source is empty")
    shard_size = len(ds)
    shard_seed = int(np.random.SeedSequence([seed, shard.shard_index]).generate_state(1)[0])
    if config.shuffle:
        ds = ds.shuffle(seed=shard_seed)
    ds = ds.repeat(config.num_epochs).random_map(functools.partial(_process, spec=config.views), seed=shard_seed)
    if start:
        ds = ds[start:]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=16))
    if config.worker_count > 0:
        _mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                         per_worker_buffer_size=config.worker_buffer_size),
                            worker_init_fn=_mark_flags_parsed)
    return DataIterator(iter(it), config, shard_seed, shard_size, start)


def batch_cameras(batch: dict, which: str = "target"):
    """The renderer's `Camera` with batched leaves (K [B,V,3,3], world_to_cam [B,V,4,4]) for `which` views."""
    from headsup_jax.render import Camera

    images = batch["targets" if which == "target" else "inputs"]  # [B, V, H, W, 3]
    cams = batch[f"{which}_cameras"]
    return Camera(world_to_cam=cams["world_to_cam"], K=cams["K"], width=images.shape[3], height=images.shape[2])
