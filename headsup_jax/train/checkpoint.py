"""Orbax checkpoints of the train state plus each process's data iterator state.

Saves are asynchronous and atomic (Orbax writes `N.orbax-checkpoint-tmp-*` and renames it to `N` when
complete); the manager keeps the newest `keep`. The Grain iterator state of every process is written
beside the checkpoint (small JSON, atomically) with the process count that wrote it, so a resumed run
continues on the exact next batch, and a run resumed on another number of processes knows how far the
data had got (`train.data.resume_position`). Restoring takes the shardings of the *current* mesh, so a
checkpoint restores onto a different device count. The workdir may be a local folder or a bucket URI.

Faults: a write cut short (kill, crash) leaves a temporary folder, ignored with a warning naming its step
and removed. Each finished checkpoint gets a checksum manifest (`train.manifest`); one that fails it or
cannot be read is reported by step and file, moved to `checkpoints_corrupt/` and the previous one
restored. A write that fails (disk full) raises `CheckpointError`, the previous checkpoints intact.
"""
from __future__ import annotations

import json
import logging
import re
import time

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from headsup_jax.errors import InputError
from headsup_jax.fileio import write_json_atomic
from headsup_jax.train.manifest import first_mismatch, manifest

log = logging.getLogger(__name__)

INTERRUPTED = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")  # Orbax's temporary folder of a step being written
CLEANUP_TRIES, CLEANUP_PAUSE_S = 10, 0.5  # for temporary folders still being written by a failed save's threads
MISFIT = ("stored shape", "tree structures do not match")  # Orbax's words for a checkpoint of another model


class CheckpointError(InputError):
    """A checkpoint that cannot be written (disk full, read-only) or read back: the storage's fault, not a
    bug; `headsup train` prints it as one line."""


class Checkpointer:
    def __init__(self, workdir, every: int, keep: int):
        workdir = epath.Path(workdir)
        self.root = (workdir if workdir.is_absolute() else workdir.resolve()) / "checkpoints"  # Orbax wants absolute
        self.every = every
        self.interrupted = sorted(int(m[1]) for p in (self.root.iterdir() if self.root.exists() else [])
                                  if (m := INTERRUPTED.match(p.name)))  # before the manager removes them
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                               enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self.manager = self._manager(options)
        self._unsealed = []  # steps saved here whose manifest is not written yet (their save may be in flight)

    def _manager(self, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
        """Orbax's manager, the temporary folders of interrupted writes removed. Orbax removes them in a
        thread that only its save awaits (a restore would see them), so it is awaited here; a removal that
        fails because a folder is still filling (the writer threads of a save that failed in this process
        finish after its error) is tried again with a new manager."""
        for attempt in range(1, CLEANUP_TRIES + 1):
            manager = ocp.CheckpointManager(self.root, options=options)
            if not self.interrupted:
                return manager
            try:
                manager._maybe_await_cleanup_tmp_directory()
                return manager
            except OSError as e:
                manager.close()
                if attempt == CLEANUP_TRIES:
                    raise CheckpointError(f"{self.root}: the unfinished checkpoints {self.interrupted} cannot be "
                                          f"removed ({e.strerror or e}: {e.filename}); is another run still "
                                          f"writing there?") from e
                log.warning("removing the unfinished checkpoints in %s: %s; trying again", self.root, e)
                time.sleep(CLEANUP_PAUSE_S)

    def _data_folder(self, step: int) -> epath.Path:
        return self.root.parent / "data_state" / f"{step}"

    def _manifest_path(self, step: int) -> epath.Path:
        return self.root.parent / "checkpoint_manifests" / f"{step}.json"

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether `step` is on the checkpoint interval (our own test: Orbax's should_save also says yes to
        a first step that is not on the interval; a 3-step run with every=1000 saved steps 1 and 3)."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: nnx.State, data_state: dict | None, force: bool = False,
             train_seconds: float | None = None, skipped_updates: int = 0) -> bool:
        """Starts saving `state` at `step` if the interval says so (or `force`); returns whether it did.
        `train_seconds` (the run's training wall time so far) and `skipped_updates` (the non-finite steps
        dropped so far) are recorded with the data state, so a resumed run continues both. A failed
        write (of this save, or of the one before, finishing) raises CheckpointError."""
        if not (force or self.due(step)) or step in self.manager.all_steps():
            return False
        self.wait()
        try:
            if jax.process_index() == 0:
                self._manifest_path(step).unlink(missing_ok=True)  # of a checkpoint of this step moved aside
            if data_state is not None:
                record = {"process_count": jax.process_count(), "process_index": jax.process_index(),
                          "data": data_state, "train_seconds": train_seconds,
                          "skipped_updates": skipped_updates}
                write_json_atomic(self._data_folder(step) / f"process_{jax.process_index()}.json", record)
            saved = self.manager.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)), force=True)
        except Exception as e:  # noqa: BLE001 (storage errors arrive wrapped by Orbax's threads)
            raise self._write_error(step, e) from e
        self._unsealed.append(step)
        self._prune_data_states()
        return saved

    def _write_error(self, step: int, e: Exception) -> Exception:
        """CheckpointError for a failed write of `step` whose cause is the storage (an OSError), else `e`."""
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            return e
        kept = sorted(s for s in self.manager.all_steps() if s != step)
        return CheckpointError(f"{self.root}: writing checkpoint {step} failed: {cause.strerror or cause}; "
                               f"the checkpoints kept ({kept or 'none'}) are intact and the same command resumes "
                               f"from the newest once the storage takes writes again")

    def wait(self) -> None:
        """Waits for the save in flight, then writes the checksum manifests of the checkpoints it finished."""
        try:
            self.manager.wait_until_finished()
            finished = set(self.manager.all_steps())
            for step in [s for s in self._unsealed if s in finished]:
                if jax.process_index() == 0:
                    write_json_atomic(self._manifest_path(step), manifest(self.root / str(step)))
        except Exception as e:  # noqa: BLE001 (only with a save in flight or a manifest to write: _unsealed holds it)
            raise self._write_error(self._unsealed[-1], e) from e
        self._unsealed = [s for s in self._unsealed if s not in finished]

    def restore(self, abstract_state: nnx.State, step: int | None = None) -> tuple[int, nnx.State]:
        """The newest checkpoint that reads back whole (or the given one), laid out as `abstract_state`
        (shapes, dtypes, shardings). Newer ones that are corrupt are reported by step and file and moved
        to checkpoints_corrupt/; newer interrupted writes are reported by step."""
        steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                              nnx.to_pure_dict(abstract_state))
        for s in steps:
            problem, pure = self._read(s, target)
            if problem is None:
                for skipped in [i for i in self.interrupted if i > s]:
                    log.warning("checkpoint %d in %s was not finished (its write was interrupted): ignored, "
                                "restoring step %d", skipped, self.root, s)
                nnx.replace_by_pure_dict(abstract_state, pure)  # fills abstract_state in place
                return s, abstract_state
            if step is not None:
                raise CheckpointError(problem)
            log.error("%s: moved to %s, trying the previous checkpoint", problem, self._quarantine(s))
        raise CheckpointError(f"{self.root}: no checkpoint reads back whole (steps {steps}, reported above)")

    def _read(self, step: int, target) -> tuple[str | None, dict | None]:
        """(None, the state's pure dict) or (what is wrong with checkpoint `step`, None)."""
        folder = self.root / str(step)
        if self._manifest_path(step).exists():
            mismatch = first_mismatch(folder, json.loads(self._manifest_path(step).read_text()))
            if mismatch:
                return f"checkpoint {step} is corrupt: {mismatch}", None
        try:
            return None, self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 (tensorstore and JSON errors of damaged files)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if any(words in str(e) for words in MISFIT):
                raise CheckpointError(f"{folder}: the checkpoint does not fit this model (another model size or "
                                      f"config): {first}") from e
            return f"checkpoint {step} cannot be read ({folder}): {type(e).__name__}: {first}", None

    def _quarantine(self, step: int) -> epath.Path:
        """Moves checkpoint `step` out of Orbax's sight (process 0), so the run saves that step afresh."""
        dest = self.root.parent / "checkpoints_corrupt" / str(step)
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.rmtree()
            (self.root / str(step)).rename(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_quarantine_{step}")
        self.manager.reload()
        return dest

    def data_states(self, step: int) -> list[dict]:
        """The data records saved with `step`, one per process of the run that saved it, in process order
        ({"process_count", "process_index", "data", "train_seconds", "skipped_updates"}); [] if none were saved."""
        folder = self._data_folder(step)
        if not folder.exists():
            return []
        records = [json.loads(f.read_text()) for f in folder.glob("process_*.json")]
        return sorted(records, key=lambda r: r["process_index"])

    def _prune_data_states(self) -> None:
        """Removes the data states and manifests of checkpoints Orbax no longer keeps (process 0)."""
        if jax.process_index() != 0:
            return
        keep = set(self.manager.all_steps()) | {s for s in [self.manager.latest_step()] if s is not None}
        for folder in (self.root.parent / "data_state", self.root.parent / "checkpoint_manifests"):
            for sub in folder.iterdir() if folder.exists() else []:
                step = sub.name.removesuffix(".json")
                if step.isdigit() and int(step) not in keep and int(step) < max(keep, default=0):
                    sub.rmtree() if sub.is_dir() else sub.unlink()

    def close(self) -> None:
        self.wait()
        self.manager.close()
