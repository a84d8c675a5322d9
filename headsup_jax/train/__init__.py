"""Training: losses, metrics, sharding, train state and step, loop, checkpointing, evaluation."""
