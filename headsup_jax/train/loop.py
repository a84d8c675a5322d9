"""The train loop: data -> step -> logs, images, checkpoints. Resumes from `workdir` alone.

Every process runs the same loop (and the same evaluations: the state's shards live on all of them);
process 0 alone writes logs. The host reads the step's metrics only at log and checkpoint steps, so
steps are dispatched without waiting on the device; a non-finite loss is found there and named by step.
"""
from __future__ import annotations

import logging
import time

import jax
import numpy as np
from tqdm import tqdm

from headsup_jax.train.checkpoint import Checkpointer
from headsup_jax.train.data import (dataset_dir, eval_batches, held_out_split, model_inputs, require_masks,
                                    resume_position, train_iterator)
from headsup_jax.train.experiment import build_experiment
from headsup_jax.train.optim import step_learning_rate
from headsup_jax.train.peers import peers_named
from headsup_jax.train.preemption import Preemption
from headsup_jax.train.sharding import global_batch
from headsup_jax.train.step import TrainStep
from headsup_jax.train.workdir import (check_config, check_template, check_writable, resolve_template, save_config,
                                      workdir_path)

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    pass


def train(config, workdir, devices=None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Trains to config.optim.total_steps (resuming from the newest checkpoint) -> last metrics.

    `workdir`: a local folder or a bucket URI (gs://...). `stop_at`: end this call after that step
    (checkpointed), e.g. a time-boxed job of a longer run; the learning-rate schedule still follows
    total_steps, so a resumed run continues as if never stopped. SIGTERM ends the call after the current
    step, once its checkpoint is written (`train.preemption`); the call then returns normally."""
    workdir = workdir_path(workdir)
    config = resolve_template(config)
    check_config(config, workdir)  # before anything is written
    check_writable(workdir)
    experiment = build_experiment(config, workdir, devices)
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    state, start, data_start, data_state, seconds, skipped = experiment.state, 0, 0, None, 0.0, 0
    if ckpt.latest_step is not None:  # a checkpoint of another model is refused here, before the run's records
        start, state = ckpt.restore(experiment.state)
        records = ckpt.data_states(start)
        data_start, data_state = resume_position(records, f"checkpoint {start} in {ckpt.root}")
        seconds = records[0].get("train_seconds") or 0.0
        skipped = records[0].get("skipped_updates", 0)  # absent in checkpoints of older versions
        log.info("resumed from step %d", start)
    check_template(config, experiment.template, workdir)
    save_config(config, workdir)
    dataset = dataset_dir(config, workdir, sync=True)
    held_out = _held_out_batches(config, dataset)
    data = train_iterator(config, dataset, start=data_start)
    if data_state is not None:
        data.set_state(data_state)

    step_fn = TrainStep(experiment)
    writer = summary_writer(workdir)
    total = config.optim.total_steps
    end = total if stop_at is None else min(stop_at, total)
    pending, last = [], {}  # pending: (step, device metrics) not yet read on the host
    t0, last_log, started = time.perf_counter(), start, time.perf_counter() - seconds
    bar = tqdm(range(start, end), initial=start, total=total, disable=not progress or jax.process_index() != 0,
               desc="train", dynamic_ncols=True)
    with Preemption() as preemption, peers_named(ckpt):
        for step in bar:
            batch = next(data)
            require_masks(batch, config)
            state, metrics = step_fn(state, global_batch(model_inputs(batch), experiment.mesh))
            done = step + 1
            pending.append((done, metrics))
            stop = done < end and preemption.reached(done)
            log_now = done % config.log.every == 0 or done == end
            if log_now or ckpt.due(done) or done == end or stop:
                skipped += _check_finite(pending, config, ckpt)
                last, pending = {k: float(v) for k, v in metrics.items()}, []
            if log_now:
                dt = time.perf_counter() - t0
                scalars = dict(last, lr=step_learning_rate(config.optim, done), step_time=dt / (done - last_log),
                               examples_per_s=config.data.batch_size * (done - last_log) / dt,
                               skipped_updates=skipped, gaussians=experiment.atlas.count,
                               bad_records=data.metrics["skipped"])
                log_scalars(writer, done, scalars)
                bar.set_postfix(loss=f"{last['loss']:.4f}", l1=f"{last['loss/l1']:.4f}")
                t0, last_log = time.perf_counter(), done
            if held_out and config.log.images_every > 0 and (done % config.log.images_every == 0 or done == end):
                _log_images(writer, done, experiment, state, held_out)
            ckpt.save(done, state, data.get_state(), force=done == end or stop,
                      train_seconds=time.perf_counter() - started, skipped_updates=skipped)
            if stop:
                ckpt.wait()
                log.warning("SIGTERM (preemption): stopped after step %d with its checkpoint saved in %s; the same "
                            "command resumes from it", done, ckpt.root)
                break
    ckpt.close()
    if writer:
        writer.close()
    return last


NONFINITE_CHECKED = ("loss", "grad_norm")  # a NaN/inf gradient anywhere makes its global norm non-finite


def _check_finite(pending, config, ckpt) -> int:
    """Reads the loss and gradient norm of the steps since the last read -> how many were non-finite
    (their updates were dropped by optax.apply_if_finite, each logged); with on_nonfinite="raise" the
    first one stops the run, before any checkpoint of it is written."""
    bad = 0
    for step, m in pending:
        values = {k: float(m[k]) for k in NONFINITE_CHECKED if k in m}
        names = [k for k, v in values.items() if not np.isfinite(v)]
        if names:
            bad += 1
            quantities = ", ".join(f"{k} is {values[k]}" for k in names)
            if config.on_nonfinite == "raise":
                raise NonFiniteLoss(f"step {step}: {quantities} ({ {k: float(v) for k, v in m.items()} }); "
                                    f"last good checkpoint: {ckpt.latest_step}")
            log.warning("step %d: %s: its update was skipped (on_nonfinite=skip)", step, quantities)
    return bad


def _held_out_batches(config, dataset) -> list[dict]:
    """The batches the image logs render: validation identities, else test ones; [] (with a warning)
    when the dataset has neither or image logs are off."""
    if config.log.images_every <= 0:
        return []
    split = held_out_split(dataset)
    if split is None:
        log.warning("%s has no validation or test split: no held-out renders will be logged", dataset)
        return []
    from headsup_jax.data.tfds_builder import load_source

    return list(eval_batches(config, load_source(dataset, split), config.log.eval_subjects, num_targets=2))


def summary_writer(workdir):
    """The TensorBoard writer of workdir/tensorboard on process 0, None on the others."""
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def log_scalars(writer, step: int, scalars: dict) -> None:
    if writer:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)
        writer.flush()


def _log_images(writer, step, experiment, state, batches) -> None:
    """Renders vs targets of held-out identities, one grid image. Every process evaluates; process 0 writes."""
    from headsup_jax.eval.evaluate import evaluate_batches, image_grid

    result = evaluate_batches(experiment, state, batches)
    if writer:
        writer.add_image("validation/renders_vs_targets", image_grid(result["renders"], result["targets"]), step,
                         dataformats="HWC")
        for k, v in result["metrics"].items():
            writer.add_scalar(f"validation/{k}", float(np.mean(v)), step)
