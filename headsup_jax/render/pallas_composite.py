"""Pallas compositing kernels (forward and backward), one program per tile.

The kernels read the packed layout of `composite.py` as dense blocks: a tile's depth-ordered attributes
[A, K] (gathered by XLA beforehand, so the kernel needs no arbitrary gathers) and return per-pixel
images. A tile's list ends at its first entry with zero opacity (`rasterize` zero-pads the lists and
never lists a Gaussian below the 1/255 opacity floor). Pixels are laid out as [PIX // 128, 128] so a
tile is a whole number of 128-lane rows. Attributes are read as scalars from refs (`ref[row, k]`),
which every lowering supports.

On CPU the kernels run with `interpret=True`; they lower for TPU (Mosaic) and for CUDA GPUs through Mosaic
GPU (default) or Triton (see `gpu_lowering`). One kernel body serves all; the per-platform differences
are confined to how fresh register arrays are created (`_iota`, arrays derived from it).
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from headsup_jax.render.composite import (NUM_ATTRS, NUM_OUT, CompositingRules, alpha_grads, gaussian_alpha,
                                          step_back)
from headsup_jax.render.tiles import TileGrid

LANES = 128


def _pixel_layout(grid: TileGrid) -> tuple[int, int]:
    if grid.pixels_per_tile % LANES:
        raise ValueError(f"the Pallas backend needs tile_size**2 to be a multiple of {LANES}, "
                         f"got tile_size={grid.tile_size}")
    return grid.pixels_per_tile // LANES, LANES


def _iota(shape, dim, mosaic_gpu: bool):
    if mosaic_gpu:  # Mosaic GPU needs the register layout of a fresh array spelled out
        from jax.experimental.pallas import mosaic_gpu as plgpu

        layout = plgpu.Layout.WG_STRIDED(shape, vec_size=math.prod(shape) // 128)
        return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=layout)
    return jax.lax.broadcasted_iota(jnp.int32, shape, dim)


def _pixel_centers(grid: TileGrid, mosaic_gpu: bool = False):
    """Centres of the current program's tile. Two [ROWS, 128] arrays (x, y)."""
    shape = _pixel_layout(grid)
    t = pl.program_id(0)
    p = _iota(shape, 0, mosaic_gpu) * LANES + _iota(shape, 1, mosaic_gpu)
    s = grid.tile_size
    rem, div = jax.lax.rem, jax.lax.div  # truncating: the operands are non-negative (floor would need sign)
    px = rem(t, grid.tiles_x) * s + rem(p, s)
    py = div(t, grid.tiles_x) * s + div(p, s)
    return px.astype(jnp.float32) + 0.5, py.astype(jnp.float32) + 0.5


def _entry(attrs_ref, k):
    """The attributes of list entry k as scalars, in ROWS order."""
    return [attrs_ref[i, k] for i in range(NUM_ATTRS)]


def _forward_kernel(attrs_ref, out_ref, last_ref, *, grid: TileGrid, rules: CompositingRules, capacity: int,
                    mosaic_gpu: bool = False):
    px, py = _pixel_centers(grid, mosaic_gpu)
    zeros = px * 0.0  # derived from px, not a constant: keeps Mosaic GPU's strided register layout

    def cond(state):
        k, done = state[0], state[-1]
        listed = attrs_ref[5, jnp.minimum(k, capacity - 1)] > 0.0
        return (k < capacity) & listed & (jnp.min(done) < 1.0)

    def body(state):
        k, trans, r, g, b, d, last, done = state
        e = _entry(attrs_ref, k)
        alpha, _, _, _ = gaussian_alpha(e, px, py, rules)
        after = trans * (1.0 - alpha)
        live = done < 1.0
        stops = live & (alpha > 0.0) & (after <= rules.min_transmittance)
        keep = live & ~stops
        w = jnp.where(keep, alpha * trans, 0.0)
        return (k + 1, jnp.where(keep, after, trans), r + w * e[6], g + w * e[7], b + w * e[8], d + w * e[9],
                jnp.where(stops, k.astype(jnp.float32), last), jnp.where(stops, 1.0, done))

    # `last` is carried as float32 (exact below 2**24): Mosaic GPU loses integer signedness in `where`.
    init = (jnp.int32(0), zeros + 1.0, zeros, zeros, zeros, zeros, zeros, zeros)
    k_end, trans, r, g, b, d, last, done = jax.lax.while_loop(cond, body, init)
    for i, img in enumerate((r, g, b, d, trans)):
        out_ref[i] = img
    last_ref[...] = jnp.where(done > 0.0, last, k_end.astype(jnp.float32)).astype(jnp.int32)  # else list length


def _backward_kernel(attrs_ref, out_ref, last_ref, d_out_ref, grad_ref, *, grid: TileGrid,
                     rules: CompositingRules, mosaic_gpu: bool = False):
    """Walks the list back in blocks of 128 entries; a block's gradients are gathered in 128-lane rows
    and stored with one aligned store per attribute (TPU cannot store scalars to VMEM)."""
    px, py = _pixel_centers(grid, mosaic_gpu)
    last = last_ref[...]
    g_r, g_g, g_b, g_d = d_out_ref[0], d_out_ref[1], d_out_ref[2], d_out_ref[3]
    trans_final = out_ref[4]
    lane = _iota((1, LANES), 1, mosaic_gpu)
    n_blocks = jax.lax.div(jnp.max(last) + LANES - 1, LANES)  # entries past every pixel's stop add nothing

    def entry(j, state, block):
        trans, tail, rows = state
        k = block * LANES + (LANES - 1 - j)
        e = _entry(attrs_ref, k)
        alpha, falloff, dx, dy = gaussian_alpha(e, px, py, rules)
        alpha = jnp.where(k < last, alpha, 0.0)
        v = g_r * e[6] + g_g * e[7] + g_b * e[8] + g_d * e[9]
        before, w, d_alpha = step_back(alpha, trans, tail, v)
        d_geom = alpha_grads(d_alpha, alpha, falloff, dx, dy, e, rules)
        grads = d_geom + (g_r * w, g_g * w, g_b * w, g_d * w)
        at = lane == LANES - 1 - j
        rows = tuple(jnp.where(at, jnp.sum(gr), row) for gr, row in zip(grads, rows))
        return before, tail + v * w, rows

    def block_body(step, state):
        block = n_blocks - 1 - step
        trans, tail, rows = jax.lax.fori_loop(0, LANES, functools.partial(entry, block=block), (*state, zeros))
        store(block, rows)
        return trans, tail

    def store(block, rows):
        start = pl.multiple_of(block * LANES, LANES)
        for i, row in enumerate(rows):  # row by row: Triton wants power-of-two shapes
            grad_ref[pl.ds(i, 1), pl.ds(start, LANES)] = row

    zeros = tuple(lane.astype(jnp.float32) * 0.0 for _ in range(NUM_ATTRS))  # strided layout (see forward)
    jax.lax.fori_loop(n_blocks, grad_ref.shape[1] // LANES, lambda b, _: store(b, zeros), None)
    jax.lax.fori_loop(0, n_blocks, block_body, (trans_final, d_out_ref[4] * trans_final))


def _specs(grid: TileGrid, capacity: int):
    rows, lanes = _pixel_layout(grid)
    attrs = pl.BlockSpec((None, NUM_ATTRS, capacity), lambda t: (t, 0, 0))
    image = pl.BlockSpec((None, NUM_OUT, rows, lanes), lambda t: (t, 0, 0, 0))
    last = pl.BlockSpec((None, rows, lanes), lambda t: (t, 0, 0))
    return attrs, image, last


def gpu_lowering() -> str:
    """"mosaic" (Mosaic GPU, Hopper and newer; the default) or "triton" (any CUDA GPU Triton supports),
    from the environment variable HEADSUP_PALLAS_GPU."""
    choice = os.environ.get("HEADSUP_PALLAS_GPU", "mosaic")
    if choice not in ("mosaic", "triton"):
        raise ValueError(f"HEADSUP_PALLAS_GPU must be 'mosaic' or 'triton', got {choice!r}")
    return choice


def _pallas(kernel, out_shape, in_specs, out_specs, name, *args):
    """pallas_call lowered per platform: Mosaic on TPU, Mosaic GPU or Triton on CUDA, the interpreter
    elsewhere. Only the branch of the platform being compiled for is lowered."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas import triton as pltriton

    def call(mosaic_gpu=False, **params):
        body = functools.partial(kernel, mosaic_gpu=mosaic_gpu)
        return lambda *a: pl.pallas_call(body, out_shape=out_shape, grid=(args[0].shape[0],), in_specs=in_specs,
                                         out_specs=out_specs, name=name, **params)(*a)

    if gpu_lowering() == "mosaic":
        cuda = call(mosaic_gpu=True, compiler_params=plgpu.CompilerParams())
    else:
        cuda = call(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1))
    return jax.lax.platform_dependent(
        *args,
        tpu=call(compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",))),
        cuda=cuda,
        default=call(interpret=True),
    )


def pallas_forward(attrs, counts, grid: TileGrid, rules: CompositingRules):
    """attrs [T, A, K] -> out [T, 5, PIX], last [T, PIX] (counts are implied by the zero-opacity padding)."""
    del counts
    num_tiles, _, capacity = attrs.shape
    rows, lanes = _pixel_layout(grid)
    attrs_spec, image_spec, last_spec = _specs(grid, capacity)
    out, last = _pallas(
        functools.partial(_forward_kernel, grid=grid, rules=rules, capacity=capacity),
        [jax.ShapeDtypeStruct((num_tiles, NUM_OUT, rows, lanes), jnp.float32),
         jax.ShapeDtypeStruct((num_tiles, rows, lanes), jnp.int32)],
        [attrs_spec], [image_spec, last_spec], "headsup_composite_fwd",
        attrs.astype(jnp.float32),
    )
    return out.reshape(num_tiles, NUM_OUT, -1), last.reshape(num_tiles, -1)


def pallas_backward(attrs, counts, out, last, d_out, grid: TileGrid, rules: CompositingRules):
    """Cotangents of attrs [T, A, K] from those of out [T, 5, PIX]."""
    del counts
    num_tiles, _, capacity = attrs.shape
    rows, lanes = _pixel_layout(grid)
    attrs_spec, image_spec, last_spec = _specs(grid, capacity)
    pixels = lambda x: x.reshape(num_tiles, -1, rows, lanes)
    grads = _pallas(
        functools.partial(_backward_kernel, grid=grid, rules=rules),
        jax.ShapeDtypeStruct(attrs.shape, jnp.float32),
        [attrs_spec, image_spec, last_spec, image_spec], attrs_spec, "headsup_composite_bwd",
        attrs.astype(jnp.float32), pixels(out), last.reshape(num_tiles, rows, lanes),
        pixels(d_out.astype(jnp.float32)),
    )
    return grads.astype(attrs.dtype)
