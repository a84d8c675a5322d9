"""One optimisation step, jitted over the mesh with explicit shardings and a donated state."""
from __future__ import annotations

import jax
import optax
from flax import nnx

from headsup_jax.train.objective import objective
from headsup_jax.train.sharding import batch_sharding


def step_body(config, graphdef, supervision_def):
    """The unjitted step: (state, batch, supervision_state) -> (state, metrics)."""

    def step(state, batch, supervision_state):
        model, optimizer = nnx.merge(graphdef, state)
        supervision = nnx.merge(supervision_def, supervision_state)
        grad_fn = nnx.value_and_grad(lambda m: objective(m, supervision, batch, config), has_aux=True)
        (loss, (terms, renders, _)), grads = grad_fn(model)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **{f"loss/{k}": v for k, v in terms.items()},
                   "mean_alpha": renders.alpha.mean(), "dropped_pairs": renders.stats["dropped_pairs"].sum()}
        return nnx.state((model, optimizer)), metrics

    return step


class TrainStep:
    """The train step of an experiment: `state, metrics = step(state, batch)` on global arrays (see
    sharding.global_batch). `step.lower(state, batch)` lowers it ahead of time (arrays or
    jax.ShapeDtypeStruct with shardings) for `.compile()`, cost and memory analysis. The state is donated;
    one compilation per batch structure and ranks (jit then specialises on shapes, e.g. N views)."""

    def __init__(self, experiment):
        self.mesh, self.shardings = experiment.mesh, experiment.shardings
        supervision_def, self.supervision_state = nnx.split(experiment.supervision)
        self.body = step_body(experiment.config, experiment.graphdef, supervision_def)
        self._jitted = {}

    def jitted(self, batch):
        """The jitted (state, batch, supervision_state) -> (state, metrics) for batches like `batch`."""
        key = jax.tree.structure(batch), tuple(len(x.shape) for x in jax.tree.leaves(batch))
        if key not in self._jitted:
            batch_shardings = jax.tree.map(lambda x: batch_sharding(self.mesh, len(x.shape)), batch)
            self._jitted[key] = jax.jit(self.body, in_shardings=(self.shardings, batch_shardings, None),
                                        out_shardings=(self.shardings, None), donate_argnums=0)
        return self._jitted[key]

    def lower(self, state, batch) -> jax.stages.Lowered:
        return self.jitted(batch).lower(state, batch, self.supervision_state)

    def __call__(self, state, batch):
        return self.jitted(batch)(state, batch, self.supervision_state)
