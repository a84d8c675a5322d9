"""Orbax checkpoints of the train state plus each process's data iterator state.

Saves are asynchronous and atomic (a killed run leaves the last finished checkpoint intact); the
manager keeps the newest `keep`. The Grain iterator state of every process is written beside the
checkpoint (small JSON, atomically), so a resumed run continues on the exact next batch. Restoring takes
the shardings of the *current* mesh, so a checkpoint restores onto a different device count.
"""
from __future__ import annotations

import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from headsup_jax.data.io import write_json_atomic


class Checkpointer:
    def __init__(self, workdir, every: int, keep: int):
        self.root = pathlib.Path(workdir).absolute() / "checkpoints"
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.root, options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                            enable_async_checkpointing=True))

    def _data_file(self, step: int, process: int | None = None) -> pathlib.Path:
        process = jax.process_index() if process is None else process
        return self.root.parent / "data_state" / f"{step}" / f"process_{process}.json"

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, data_state: dict | None, force: bool = False) -> bool:
        """Starts saving `state` at `step` if the interval says so (or `force`); returns whether it did."""
        # our own interval test: Orbax's should_save also says yes to a first step that is not on the
        # interval (a 3-step run with every=1000 saved steps 1 and 3)
        if not (force or (self.every > 0 and step % self.every == 0)) or step in self.manager.all_steps():
            return False
        if data_state is not None:
            write_json_atomic(self._data_file(step), data_state)
        saved = self.manager.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)), force=True)
        self._prune_data_states()
        return saved

    def restore(self, abstract_state: nnx.State, step: int | None = None) -> tuple[int, nnx.State, dict | None]:
        """The newest (or given) checkpoint, laid out as `abstract_state` (shapes, dtypes, shardings)."""
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                              nnx.to_pure_dict(abstract_state))
        pure = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        nnx.replace_by_pure_dict(abstract_state, pure)  # fills abstract_state in place
        data_file = self._data_file(step)
        data_state = json.loads(data_file.read_text()) if data_file.exists() else None
        return step, abstract_state, data_state

    def _prune_data_states(self) -> None:
        folder = self.root.parent / "data_state"
        if jax.process_index() != 0 or not folder.exists():
            return
        keep = set(self.manager.all_steps()) | {s for s in [self.manager.latest_step()] if s is not None}
        for sub in folder.iterdir():
            if sub.name.isdigit() and int(sub.name) not in keep and int(sub.name) < max(keep, default=0):
                for f in sub.iterdir():
                    f.unlink()
                sub.rmdir()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
