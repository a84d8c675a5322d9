"""Orbax checkpoints of the train state plus each process's data iterator state.

Saves are asynchronous and atomic (a killed run leaves the last finished checkpoint intact); the
manager keeps the newest `keep`. The Grain iterator state of every process is written beside the
checkpoint (small JSON, atomically) with the process count that wrote it, so a resumed run continues on
the exact next batch, and a run resumed on another number of processes knows how far the data had got
(`train.data.resume_position`). Restoring takes the shardings of the *current* mesh, so a checkpoint
restores onto a different device count. The workdir may be a local folder or a bucket URI (gs://...).
"""
from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from headsup_jax.fileio import write_json_atomic


class Checkpointer:
    def __init__(self, workdir, every: int, keep: int):
        workdir = epath.Path(workdir)
        self.root = (workdir if workdir.is_absolute() else epath.Path.cwd() / workdir) / "checkpoints"
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.root, options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                            enable_async_checkpointing=True))

    def _data_folder(self, step: int) -> epath.Path:
        return self.root.parent / "data_state" / f"{step}"

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether `step` is on the checkpoint interval (our own test: Orbax's should_save also says yes to
        a first step that is not on the interval; a 3-step run with every=1000 saved steps 1 and 3)."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: nnx.State, data_state: dict | None, force: bool = False,
             train_seconds: float | None = None) -> bool:
        """Starts saving `state` at `step` if the interval says so (or `force`); returns whether it did.
        `train_seconds` (the run's training wall time so far) is recorded with the data state."""
        if not (force or self.due(step)) or step in self.manager.all_steps():
            return False
        if data_state is not None:
            record = {"process_count": jax.process_count(), "process_index": jax.process_index(), "data": data_state,
                      "train_seconds": train_seconds}
            write_json_atomic(self._data_folder(step) / f"process_{jax.process_index()}.json", record)
        saved = self.manager.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)), force=True)
        self._prune_data_states()
        return saved

    def restore(self, abstract_state: nnx.State, step: int | None = None) -> tuple[int, nnx.State]:
        """The newest (or given) checkpoint, laid out as `abstract_state` (shapes, dtypes, shardings)."""
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                              nnx.to_pure_dict(abstract_state))
        pure = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        nnx.replace_by_pure_dict(abstract_state, pure)  # fills abstract_state in place
        return step, abstract_state

    def data_states(self, step: int) -> list[dict]:
        """The data records saved with `step`, one per process of the run that saved it, in process order
        ({"process_count", "process_index", "data"}); [] if none were saved."""
        folder = self._data_folder(step)
        if not folder.exists():
            return []
        records = [json.loads(f.read_text()) for f in folder.glob("process_*.json")]
        return sorted(records, key=lambda r: r["process_index"])

    def _prune_data_states(self) -> None:
        folder = self.root.parent / "data_state"
        if jax.process_index() != 0 or not folder.exists():
            return
        keep = set(self.manager.all_steps()) | {s for s in [self.manager.latest_step()] if s is not None}
        for sub in folder.iterdir():
            if sub.name.isdigit() and int(sub.name) not in keep and int(sub.name) < max(keep, default=0):
                sub.rmtree()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
