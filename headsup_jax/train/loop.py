"""The train loop: data -> step -> logs, images, checkpoints. Resumes from `workdir` alone."""
from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from headsup_jax.train.checkpoint import Checkpointer
from headsup_jax.train.data import eval_batch, model_inputs, train_iterator
from headsup_jax.train.experiment import build_experiment
from headsup_jax.train.optim import learning_rate
from headsup_jax.train.sharding import global_batch
from headsup_jax.train.step import TrainStep

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    pass


def save_config(config, workdir: pathlib.Path) -> None:
    """The run's config beside its checkpoints (a resumed run must use the same one)."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2)
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        log.warning("config differs from the one in %s; the new one is used and saved", path)
    if jax.process_index() == 0:
        from headsup_jax.data.io import write_bytes_atomic

        write_bytes_atomic(path, text.encode())


def train(config, workdir, devices=None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Trains to config.optim.total_steps (resuming from the newest checkpoint) -> last metrics.

    `stop_at`: end this call after that step (checkpointed), e.g. a time-boxed job of a longer run; the
    learning-rate schedule still follows total_steps, so a resumed run continues as if never stopped."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir)
    experiment = build_experiment(config, workdir, devices)
    data = train_iterator(config, workdir)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    state, start = experiment.state, 0
    if ckpt.latest_step is not None:
        start, state, data_state = ckpt.restore(experiment.state)
        if data_state is not None:
            data.set_state(data_state)
        log.info("resumed from step %d", start)
    step_fn = TrainStep(experiment)
    writer = _writer(workdir)
    lr = learning_rate(config.optim)
    total = config.optim.total_steps
    end = total if stop_at is None else min(stop_at, total)
    metrics, skipped, t0, last_log = {}, 0, time.perf_counter(), start
    bar = tqdm(range(start, end), initial=start, total=total, disable=not progress or jax.process_index() != 0,
               desc="train", dynamic_ncols=True)
    for step in bar:
        batch = global_batch(model_inputs(next(data)), experiment.mesh)
        state, metrics = step_fn(state, batch)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            if config.on_nonfinite == "raise":
                raise NonFiniteLoss(f"step {step + 1}: loss is {loss} ({ {k: float(v) for k, v in metrics.items()} }); "
                                    f"last good checkpoint: {ckpt.latest_step}")
            skipped += 1  # optax.apply_if_finite has dropped the update
        done = step + 1
        if done % config.log.every == 0 or done == end:
            dt = time.perf_counter() - t0
            scalars = {k: float(v) for k, v in metrics.items()}
            scalars.update(lr=float(lr(done)), step_time=dt / (done - last_log),
                           examples_per_s=config.data.batch_size * (done - last_log) / dt, skipped_updates=skipped,
                           gaussians=experiment.atlas.count, bad_records=data.metrics["skipped"])
            _log_scalars(writer, done, scalars)
            bar.set_postfix(loss=f"{loss:.4f}", l1=f"{scalars['loss/l1']:.4f}")
            t0, last_log = time.perf_counter(), done
        if writer and config.log.images_every > 0 and (done % config.log.images_every == 0 or done == end):
            _log_images(writer, done, experiment, state, config, workdir)
        ckpt.save(done, state, data.get_state(), force=done == end)
    ckpt.close()
    if writer:
        writer.close()
    return {k: float(v) for k, v in metrics.items()}


def _writer(workdir):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def _log_scalars(writer, step: int, scalars: dict) -> None:
    if writer:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)
        writer.flush()


def _log_images(writer, step, experiment, state, config, workdir) -> None:
    """Renders vs targets of held-out (validation) identities, one grid image."""
    from headsup_jax.train.evaluate import evaluate_batch, image_grid

    batch = eval_batch(config, workdir, "validation", config.log.eval_subjects, num_targets=2)
    result = evaluate_batch(experiment, state, batch)
    writer.add_image("validation/renders_vs_targets", image_grid(result["renders"], result["targets"]), step,
                     dataformats="HWC")
    for k, v in result["metrics"].items():
        writer.add_scalar(f"validation/{k}", float(np.mean(v)), step)
