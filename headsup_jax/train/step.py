"""One optimisation step, jitted over the mesh with explicit shardings and a donated state."""
from __future__ import annotations

import jax
import optax
from flax import nnx

from headsup_jax.train.objective import objective
from headsup_jax.train.sharding import batch_sharding


def make_train_step(experiment):
    """(state, batch) -> (state, metrics). `batch` holds global arrays (see sharding.global_batch)."""
    config, graphdef = experiment.config, experiment.graphdef

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        grad_fn = nnx.value_and_grad(lambda m: objective(m, batch, config), has_aux=True)
        (loss, (terms, renders, _)), grads = grad_fn(model)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **{f"loss/{k}": v for k, v in terms.items()},
                   "mean_alpha": renders.alpha.mean(), "dropped_pairs": renders.stats["dropped_pairs"].sum()}
        return nnx.state((model, optimizer)), metrics

    def batch_shardings(batch):
        return jax.tree.map(lambda x: batch_sharding(experiment.mesh, x.ndim), batch)

    jitted = []

    def run(state, batch):
        if not jitted:  # the batch's ranks are known at the first call; jit recompiles per shape (e.g. N)
            jitted.append(jax.jit(step, in_shardings=(experiment.shardings, batch_shardings(batch)),
                                  out_shardings=(experiment.shardings, None), donate_argnums=0))
        return jitted[0](state, batch)

    return run
