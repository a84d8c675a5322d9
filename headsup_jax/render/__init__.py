"""Differentiable 3D Gaussian splatting in JAX: projection, SH colour, tile binning, compositing.

    from headsup_jax.render import Gaussians, Camera, project, rasterize
"""
from headsup_jax.render.composite import CompositingRules
from headsup_jax.render.projection import project
from headsup_jax.render.rasterize import rasterize
from headsup_jax.render.sh import eval_sh
from headsup_jax.render.types import Camera, Gaussians, Projection, RenderOutput

__all__ = ["Camera", "CompositingRules", "Gaussians", "Projection", "RenderOutput", "eval_sh", "project", "rasterize"]
