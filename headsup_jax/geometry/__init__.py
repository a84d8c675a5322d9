"""Head templates, the UV atlas, Gaussian anchoring and the blendshape rig.

    from headsup_jax.geometry import load_template, build_atlas, anchor, deform, expression_coefficients
"""
from headsup_jax.geometry.anchor import anchor
from headsup_jax.geometry.atlas import UVAtlas, build_atlas
from headsup_jax.geometry.loaders import load_template
from headsup_jax.geometry.rig import deform, expression_coefficients
from headsup_jax.geometry.template import HeadTemplate

__all__ = ["HeadTemplate", "UVAtlas", "anchor", "build_atlas", "deform", "expression_coefficients", "load_template"]
