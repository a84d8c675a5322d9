"""headsup-jax: feed-forward 3D Gaussian heads from calibrated multi-view captures."""

__version__ = "0.1.0"
