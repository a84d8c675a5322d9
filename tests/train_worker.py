"""Subprocess helper of the training infrastructure tests (test_train_distributed.py, test_train_resume.py).

    python tests/train_worker.py steps OUT.npz --mesh DATA,FSDP,TENSOR --steps K
        K train steps of the shrunk tiny config on the synthetic batches of seeds 0..K-1 (batch 8); saves
        each step's loss and parameters and the parameters' PartitionSpecs. XLA_FLAGS sets fake devices.
    python tests/train_worker.py multihost OUT.npz --coordinator HOST:PORT --num_processes N --process_id I
        N processes (CPU collectives: gloo) train 3 steps on the same global batches, each feeding its
        slice, and write one checkpoint; process 0 saves losses and (gathered) parameters to OUT.npz.
    python tests/train_worker.py loop OUT.npz --workdir DIR [--stop_at S] [--mesh D,F,T] [--images_every K]
            [--coordinator HOST:PORT --num_processes N --process_id I]
        headsup_jax.train.loop.train on synthetic data (on several processes with --coordinator); logs the
        batches the loop consumed and saves the parameters of the newest checkpoint restored into a new
        experiment.
Use run_worker() (it sets XLA_FLAGS and a shared persistent compilation cache).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 8


def tiny_config(**mesh):
    from headsup_jax.train.config import size_config

    config = size_config("tiny")
    config.template = "procedural"
    config.compute_dtype = "float32"
    config.atlas_resolution = 32
    config.model.latent_size = 8
    config.model.decoder_widths = (32, 24, 16)  # latent 8 -> 16 -> 32 = atlas_resolution
    config.data.image_size = (32, 24)
    config.data.num_inputs = 2
    config.data.num_targets = 2
    config.data.batch_size = BATCH
    config.optim.warmup_steps = 1  # lr 0 at step 0 (optax warm-up), 1e-3 from step 1, cosine to step 6
    config.optim.lr = 1e-3
    config.optim.total_steps = 6  # the same schedule (so the same compiled step) in every test
    config.mesh = {**dict(data=-1, fsdp=1, tensor=1), **mesh}
    return config


def synthetic_batch(config, seed: int = 0, batch: int = BATCH) -> dict:
    """Random images in [0, 1], orbit cameras, random masks: a fixed batch (numpy) for a seed."""
    import numpy as np

    from headsup_jax.render.cameras import orbit

    H, W = config.data.image_size
    N, M = config.data.num_inputs, config.data.num_targets
    rng = np.random.default_rng(seed)
    cams = orbit(8, 0.6, W, H, fov_y_degrees=35.0)
    Ks = np.stack([np.asarray(c.K, np.float32) for c in cams])
    w2c = np.stack([np.asarray(c.world_to_cam, np.float32) for c in cams])

    def pick(n):
        idx = np.stack([rng.permutation(len(cams))[:n] for _ in range(batch)])
        return {"K": Ks[idx], "world_to_cam": w2c[idx]}

    inputs = rng.random((batch, N, H, W, 3), dtype=np.float32)
    input_cameras = pick(N)
    targets = rng.random((batch, M, H, W, 3), dtype=np.float32)
    target_cameras = pick(M)
    masks = (rng.random((batch, M, H, W)) < 0.5).astype(np.float32)  # float32, as the pipeline gives
    return {"inputs": inputs, "input_cameras": input_cameras, "targets": targets, "target_cameras": target_cameras,
            "target_masks": masks}


def param_arrays(experiment, state) -> dict:
    """Flat {path: numpy array} of the model's parameters in `state`."""
    import jax
    import numpy as np
    from flax import nnx

    model = nnx.merge(experiment.graphdef, state)[0]
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"param/" + "/".join(map(str, path)): np.asarray(jax.device_get(v.get_value())) for path, v in flat}


def param_specs(experiment, state) -> dict:
    from flax import nnx

    model = nnx.merge(experiment.graphdef, state)[0]
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): str(v.get_value().sharding.spec) for path, v in flat}


def run_steps(out: str, mesh: tuple[int, int, int], steps: int) -> None:
    """`steps` train steps on the synthetic batches of seeds 0, 1, ...; saves each step's loss and params."""
    import jax
    import numpy as np

    from headsup_jax.train.experiment import build_experiment
    from headsup_jax.train.sharding import global_batch
    from headsup_jax.train.step import TrainStep

    data, fsdp, tensor = mesh
    config = tiny_config(data=data, fsdp=fsdp, tensor=tensor)
    experiment = build_experiment(config)
    assert experiment.mesh.devices.size == len(jax.devices()) == data * fsdp * tensor, experiment.mesh
    step_fn = TrainStep(experiment)
    state, saved, losses = experiment.state, {}, []
    for step in range(steps):
        state, metrics = step_fn(state, global_batch(synthetic_batch(config, seed=step), experiment.mesh))
        losses.append(float(metrics["loss"]))
        saved.update({f"step{step + 1}/{k}": v for k, v in param_arrays(experiment, state).items()})
    specs = param_specs(experiment, state)
    np.savez(out, losses=np.array(losses), specs=np.array([f"{k} {v}" for k, v in specs.items()]), **saved)


def run_multihost(out: str, coordinator: str | None, num_processes: int, process_id: int, workdir: str,
                  steps: int = 3) -> None:
    """Process `process_id` of `num_processes` feeds its slice of each global batch; one checkpoint at the end."""
    import jax

    if coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=60)
    import numpy as np

    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import build_experiment
    from headsup_jax.train.sharding import global_batch
    from headsup_jax.train.step import TrainStep

    assert jax.process_count() == num_processes and jax.process_index() == process_id
    config = tiny_config()
    experiment = build_experiment(config)
    assert experiment.mesh.devices.size == num_processes
    step_fn = TrainStep(experiment)
    ckpt = Checkpointer(workdir, every=1000, keep=2)
    state, losses = experiment.state, []
    per = BATCH // num_processes
    for step in range(steps):
        full = synthetic_batch(config, seed=step)
        local = jax.tree.map(lambda x: x[process_id * per:(process_id + 1) * per], full)
        state, metrics = step_fn(state, global_batch(local, experiment.mesh))
        losses.append(float(metrics["loss"]))
        ckpt.save(step + 1, state, {"step": step + 1, "process": process_id}, force=step + 1 == steps)
    ckpt.close()
    params = param_arrays(experiment, _gathered(state))
    if process_id == 0:
        np.savez(out, losses=np.array(losses), **{f"step{steps}/{k}": v for k, v in params.items()})


def _gathered(state):
    """Fully replicated copy of a state sharded over several processes (so every process can read it)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return state
    return multihost_utils.process_allgather(state, tiled=True)


def run_loop(out: str, workdir: str, stop_at: int | None, mesh=(-1, 1, 1), images_every: int = 0,
             coordinator: str | None = None, num_processes: int = 1, process_id: int = 0) -> None:
    """`train.loop.train` of the resume config in `workdir` up to `stop_at` (on `mesh`, image logs every
    `images_every` steps, several processes with `coordinator`); logs every batch it consumes (subjects
    and a checksum) and saves the parameters of the newest checkpoint, restored in a new experiment, with
    the batch log (process 0)."""
    import hashlib

    import jax
    import numpy as np

    if coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=60)
    from headsup_jax.train import loop
    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import build_experiment

    data, fsdp, tensor = mesh
    config = resume_config(data=data, fsdp=fsdp, tensor=tensor)
    config.log.images_every = images_every
    seen = []
    make_iterator = loop.train_iterator

    class Logged:
        def __init__(self, it):
            self.it = it

        def __next__(self):
            batch = next(self.it)
            digest = hashlib.sha1(np.ascontiguousarray(batch["inputs"]).tobytes()).hexdigest()[:12]
            seen.append(" ".join(s.decode() if isinstance(s, bytes) else str(s) for s in batch["subject"]) + " " + digest)
            return batch

        def __getattr__(self, name):
            return getattr(self.it, name)

    loop.train_iterator = lambda *a, **k: Logged(make_iterator(*a, **k))
    loop.train(config, workdir, progress=False, stop_at=stop_at)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    experiment = build_experiment(config, workdir)
    step, state = ckpt.restore(experiment.state)
    data_states = ckpt.data_states(step)
    ckpt.close()
    params = param_arrays(experiment, _gathered(state))
    if jax.process_index() == 0:
        np.savez(out, step=step, batches=np.array(seen), process_count=data_states[0]["process_count"],
                 data_state=np.array(json.dumps(data_states[0]["data"], sort_keys=True)), **params)


def resume_config(**mesh):
    config = tiny_config(**mesh)
    config.data.synthetic_subjects = 8
    config.checkpoint.every = 3
    config.checkpoint.keep = 2
    config.log.every = 1
    config.log.images_every = 0
    return config


def worker_env(cache_dir, devices: int = 1) -> dict:
    """Environment of a worker: `devices` fake CPU devices, a shared persistent compilation cache."""
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=str(ROOT))
    return env


def run_worker(args: list[str], cache_dir, devices: int = 1, wait: bool = True, timeout: float = 400):
    """Runs this script with `args` in a subprocess; raises with its output if it fails or times out."""
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.Popen(cmd, env=worker_env(cache_dir, devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    if not wait:
        return proc
    try:
        log = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        log = proc.communicate()[0]
        raise AssertionError(f"{' '.join(args)} timed out after {timeout} s:\n{log[-4000:]}")
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{log[-4000:]}")
    return log


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(args: list[str], cache_dir, num_processes: int = 2, timeout: float = 500) -> list[str]:
    """`args` on `num_processes` local processes joined at a free port (--coordinator, --num_processes and
    --process_id appended); waits for all, kills the rest if one hangs -> their logs; raises if one failed."""
    port = free_port()
    procs = [run_worker([*args, "--coordinator", f"127.0.0.1:{port}", "--num_processes", str(num_processes),
                         "--process_id", str(i)], cache_dir, wait=False) for i in range(num_processes)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode:
            raise AssertionError(f"process {i} of {' '.join(args)} failed ({p.returncode}):\n{log[-4000:]}")
    return logs


try:
    import pytest

    @pytest.fixture(scope="session")
    def jax_cache(request):
        """A persistent compilation cache shared by the workers (most of them compile the same 1-device train
        step; compiling it takes a minute on 2 cores). It lives in pytest's cache folder, so later sessions
        reuse it too (entries are keyed by the program, jax version and flags; `pytest --cache-clear`)."""
        return request.config.cache.mkdir("jax_compilation_cache")
except ImportError:  # the worker itself does not need pytest
    pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["steps", "multihost", "loop"])
    p.add_argument("out")
    p.add_argument("--mesh", default="1,1,1")  # loop: "-1,1,1" is its default
    p.add_argument("--images_every", type=int, default=0)
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--workdir")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--stop_at", type=int)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("headsup_jax").setLevel(logging.INFO)
    if a.mode == "steps":
        run_steps(a.out, tuple(int(x) for x in a.mesh.split(",")), a.steps)
    elif a.mode == "multihost":
        run_multihost(a.out, a.coordinator, a.num_processes, a.process_id, a.workdir, a.steps)
    else:
        run_loop(a.out, a.workdir, a.stop_at, tuple(int(x) for x in a.mesh.split(",")), a.images_every,
                 a.coordinator, a.num_processes, a.process_id)


if __name__ == "__main__":
    main()
