"""Pallas compositing kernels (forward and backward), one program per tile.

The kernels read the packed layout of `composite.py` as dense blocks: a tile's depth-ordered attributes
[A, K] (gathered by XLA beforehand, so the kernel needs no arbitrary gathers) and return per-pixel
images. A tile's list ends at its first entry with zero opacity (`rasterize` zero-pads the lists and
never lists a Gaussian below the 1/255 opacity floor). Pixels are laid out as [PIX // 128, 128] so a
tile is a whole number of 128-lane rows. Lists are walked in chunks of 128 entries whose attributes are
read as scalars from refs (`ref[row, j]`), which every lowering supports. Under `vmap` the batch axes
fold into the tile axis (`_tiles_of_all_batches`): the grid is always one flat axis of tiles.

On CPU the kernels run with `interpret=True`; they lower for TPU (Mosaic) and for CUDA GPUs through Mosaic
GPU (default) or Triton (see `gpu_lowering`). One kernel body serves all. The per-platform differences:
how fresh register arrays are created (`_iota`, arrays derived from it), and where the lists live: as
the kernel's blocks (`_BlockLists`) or, on Mosaic GPU, in global memory, copied in chunk by chunk
(`_StreamedLists`).
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
    t = jax.lax.rem(pl.program_id(0), grid.num_tiles)  # the grid holds the tiles of every batched image
    p = _iota(shape, 0, mosaic_gpu) * LANES + _iota(shape, 1, mosaic_gpu)
    s = grid.tile_size
    rem, div = jax.lax.rem, jax.lax.div  # truncating: the operands are non-negative (floor would need sign)
    px = rem(t, grid.tiles_x) * s + rem(p, s)
    py = div(t, grid.tiles_x) * s + div(p, s)
    return px.astype(jnp.float32) + 0.5, py.astype(jnp.float32) + 0.5


class _BlockLists:
    """Tile lists as the kernel's blocks (TPU, Triton, the interpreter): the tile's list [A, K] and, in the
    backward pass, its gradients [A, K]. Chunks of 128 entries are views; `fetch` has nothing to do."""

    def __init__(self, attrs_ref, grad_ref=None):
        self.attrs, self.grads = attrs_ref, grad_ref

    def fetch(self, chunk):
        del chunk

    def entry(self, chunk, j, rows=range(NUM_ATTRS)):
        """The attributes of entry j of the chunk as scalars, in ROWS order (`rows`: a subset)."""
        return [self.attrs[i, chunk * LANES + j] for i in rows]

    def store(self, chunk, rows):
        start = pl.multiple_of(chunk * LANES, LANES)
        for i, row in enumerate(rows):  # row by row: Triton wants power-of-two shapes
            self.grads[pl.ds(i, 1), pl.ds(start, LANES)] = row


class _StreamedLists:
    """Mosaic GPU: the lists [N, A, K] and gradients stay in global memory and move through shared memory
    one chunk [A, 128] at a time (a whole list is larger than a TMA copy, <= 256 per axis, and than shared
    memory at the configs' capacities). Every cross-lane reduction in the loops syncs the warpgroup, so no
    thread still reads a chunk when the next is copied over it."""

    def __init__(self, attrs_gmem, grad_gmem, attrs_smem, grad_smem, barrier):
        self.attrs, self.grads = attrs_gmem, grad_gmem
        self.attrs_smem, self.grad_smem, self.barrier = attrs_smem, grad_smem, barrier

    def _chunk(self, ref, chunk):
        return ref.at[pl.program_id(0), :, pl.ds(pl.multiple_of(chunk * LANES, LANES), LANES)]

    def fetch(self, chunk):
        from jax.experimental.pallas import mosaic_gpu as plgpu

        plgpu.copy_gmem_to_smem(self._chunk(self.attrs, chunk), self.attrs_smem, self.barrier)
        plgpu.barrier_wait(self.barrier)

    def entry(self, chunk, j, rows=range(NUM_ATTRS)):
        del chunk
        return [self.attrs_smem[i, j] for i in rows]

    def store(self, chunk, rows):
        from jax.experimental.pallas import mosaic_gpu as plgpu

        for i, row in enumerate(rows):
            self.grad_smem[pl.ds(i, 1), :] = row
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(self.grad_smem, self._chunk(self.grads, chunk))
        plgpu.wait_smem_to_gmem(0)


def _forward_kernel(lists, out_ref, last_ref, *, grid: TileGrid, rules: CompositingRules, capacity: int,
                    mosaic_gpu: bool = False):
    """Walks the list front to back, chunk by chunk, until it ends (zero opacity) or every pixel stopped."""
    px, py = _pixel_centers(grid, mosaic_gpu)
    zeros = px * 0.0  # derived from px, not a constant: keeps Mosaic GPU's strided register layout

    def live(state):
        return jnp.min(state[-1]) < 1.0

    def entry_cond(chunk, state):
        j = state[0] - chunk * LANES
        listed = lists.entry(chunk, jnp.minimum(j, LANES - 1), rows=[5])[0] > 0.0
        return (j < LANES) & listed & live(state)

    def entry_body(chunk, state):
        k, trans, r, g, b, d, last, done = state
        e = lists.entry(chunk, k - chunk * LANES)
        alpha, _, _, _ = gaussian_alpha(e, px, py, rules)
        after = trans * (1.0 - alpha)
        running = done < 1.0
        stops = running & (alpha > 0.0) & (after <= rules.min_transmittance)
        keep = running & ~stops
        w = jnp.where(keep, alpha * trans, 0.0)
        return (k + 1, jnp.where(keep, after, trans), r + w * e[6], g + w * e[7], b + w * e[8], d + w * e[9],
                jnp.where(stops, k.astype(jnp.float32), last), jnp.where(stops, 1.0, done))

    def chunk_body(carry):
        chunk, _, state = carry
        lists.fetch(chunk)
        state = jax.lax.while_loop(functools.partial(entry_cond, chunk), functools.partial(entry_body, chunk),
                                   state)
        return chunk + 1, state[0] == (chunk + 1) * LANES, state  # more: the chunk was used up

    def chunk_cond(carry):
        chunk, more, state = carry
        return (chunk < capacity // LANES) & more & live(state)

    # `last` is carried as float32 (exact below 2**24): Mosaic GPU loses integer signedness in `where`.
    init = (jnp.int32(0), zeros + 1.0, zeros, zeros, zeros, zeros, zeros, zeros)
    _, _, state = jax.lax.while_loop(chunk_cond, chunk_body, (jnp.int32(0), jnp.bool_(True), init))
    k_end, trans, r, g, b, d, last, done = state
    for i, img in enumerate((r, g, b, d, trans)):
        out_ref[i] = img
    last_ref[...] = jnp.where(done > 0.0, last, k_end.astype(jnp.float32)).astype(jnp.int32)  # else list length


def _backward_kernel(lists, out_ref, last_ref, d_out_ref, *, grid: TileGrid, rules: CompositingRules,
                     capacity: int, mosaic_gpu: bool = False):
    """Walks the list back in chunks of 128 entries; a chunk's gradients are gathered in 128-lane rows
    and stored with one aligned store per attribute (TPU cannot store scalars to VMEM)."""
    px, py = _pixel_centers(grid, mosaic_gpu)
    last = last_ref[...]
    g_r, g_g, g_b, g_d = d_out_ref[0], d_out_ref[1], d_out_ref[2], d_out_ref[3]
    trans_final = out_ref[4]
    lane = _iota((1, LANES), 1, mosaic_gpu)
    n_chunks = jax.lax.div(jnp.max(last) + LANES - 1, LANES)  # entries past every pixel's stop add nothing

    def entry(j, state, chunk):
        trans, tail, rows = state
        e = lists.entry(chunk, LANES - 1 - j)
        alpha, falloff, dx, dy = gaussian_alpha(e, px, py, rules)
        alpha = jnp.where(chunk * LANES + (LANES - 1 - j) < last, alpha, 0.0)
        v = g_r * e[6] + g_g * e[7] + g_b * e[8] + g_d * e[9]
        before, w, d_alpha = step_back(alpha, trans, tail, v)
        d_geom = alpha_grads(d_alpha, alpha, falloff, dx, dy, e, rules)
        grads = d_geom + (g_r * w, g_g * w, g_b * w, g_d * w)
        at = lane == LANES - 1 - j
        rows = tuple(jnp.where(at, jnp.sum(gr), row) for gr, row in zip(grads, rows))
        return before, tail + v * w, rows

    def chunk_body(step, state):
        chunk = n_chunks - 1 - step
        lists.fetch(chunk)
        trans, tail, rows = jax.lax.fori_loop(0, LANES, functools.partial(entry, chunk=chunk), (*state, zeros))
        lists.store(chunk, rows)
        return trans, tail

    zeros = tuple(lane.astype(jnp.float32) * 0.0 for _ in range(NUM_ATTRS))  # strided layout (see forward)
    jax.lax.fori_loop(n_chunks, capacity // LANES, lambda c, _: lists.store(c, zeros), None)
    jax.lax.fori_loop(0, n_chunks, chunk_body, (trans_final, d_out_ref[4] * trans_final))


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


def _pallas(kernel, out_shape, in_specs, out_specs, name, *args, grads: bool):
    """pallas_call lowered per platform: Mosaic on TPU, Mosaic GPU or Triton on CUDA, the interpreter
    elsewhere. Only the branch of the platform being compiled for is lowered. The first input is the tile
    lists; with `grads` the output is their gradients, reached through the lists object as well."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas import triton as pltriton

    def blocks(attrs_ref, *refs, **kw):
        refs, grad_ref = (refs[:-1], refs[-1]) if grads else (refs, None)
        kernel(_BlockLists(attrs_ref, grad_ref), *refs, **kw)

    def streamed(attrs_gmem, *refs, **kw):
        if grads:
            *refs, grad_gmem, attrs_smem, grad_smem, barrier = refs
        else:
            (*refs, attrs_smem, barrier), grad_gmem, grad_smem = refs, None, None
        kernel(_StreamedLists(attrs_gmem, grad_gmem, attrs_smem, grad_smem, barrier), *refs, **kw)

    def call(body=blocks, mosaic_gpu=False, in_specs=in_specs, out_specs=out_specs, **params):
        return lambda *a: pl.pallas_call(functools.partial(body, mosaic_gpu=mosaic_gpu), out_shape=out_shape,
                                         grid=(args[0].shape[0],), in_specs=in_specs, out_specs=out_specs,
                                         name=name, **params)(*a)

    if gpu_lowering() == "mosaic":
        gmem = pl.BlockSpec(memory_space=plgpu.GMEM)
        chunk = plgpu.SMEM((NUM_ATTRS, LANES), jnp.float32)
        cuda = call(streamed, mosaic_gpu=True, compiler_params=plgpu.CompilerParams(),
                    in_specs=[gmem, *in_specs[1:]], out_specs=gmem if grads else out_specs,
                    scratch_shapes=[chunk, *([chunk] if grads else []), plgpu.Barrier(num_arrivals=1)])
    else:
        cuda = call(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1))
    return jax.lax.platform_dependent(
        *args,
        tpu=call(compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",))),
        cuda=cuda,
        default=call(interpret=True),
    )


def _tiles_of_all_batches(fn):
    """`fn(*arrays)` (leading axis: tiles) under `vmap`: batch axes fold into the tile axis, so the kernels
    see one flat grid of tiles however deeply they are vmapped (Mosaic GPU lowers no vmapped grid)."""

    @jax.custom_batching.custom_vmap
    def call(*arrays):
        return fn(*arrays)

    @call.def_vmap
    def fold(axis_size, in_batched, *arrays):
        arrays = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(arrays, in_batched)]
        outs = call(*[a.reshape(-1, *a.shape[2:]) for a in arrays])
        unfold = lambda o: o.reshape(axis_size, -1, *o.shape[1:])
        return jax.tree.map(unfold, outs), jax.tree.map(lambda _: True, outs)

    return call


def pallas_forward(attrs, counts, grid: TileGrid, rules: CompositingRules):
    """attrs [T, A, K] -> out [T, 5, PIX], last [T, PIX] (counts are implied by the zero-opacity padding)."""
    del counts
    rows, lanes = _pixel_layout(grid)
    capacity = attrs.shape[2]
    attrs_spec, image_spec, last_spec = _specs(grid, capacity)

    def forward(attrs):
        tiles = attrs.shape[0]
        return _pallas(
            functools.partial(_forward_kernel, grid=grid, rules=rules, capacity=capacity),
            [jax.ShapeDtypeStruct((tiles, NUM_OUT, rows, lanes), jnp.float32),
             jax.ShapeDtypeStruct((tiles, rows, lanes), jnp.int32)],
            [attrs_spec], [image_spec, last_spec], "headsup_composite_fwd", attrs, grads=False)

    out, last = _tiles_of_all_batches(forward)(attrs.astype(jnp.float32))
    return out.reshape(out.shape[0], NUM_OUT, -1), last.reshape(last.shape[0], -1)


def pallas_backward(attrs, counts, out, last, d_out, grid: TileGrid, rules: CompositingRules):
    """Cotangents of attrs [T, A, K] from those of out [T, 5, PIX]."""
    del counts
    rows, lanes = _pixel_layout(grid)
    capacity = attrs.shape[2]
    attrs_spec, image_spec, last_spec = _specs(grid, capacity)

    def backward(attrs, out, last, d_out):
        return _pallas(
            functools.partial(_backward_kernel, grid=grid, rules=rules, capacity=capacity),
            jax.ShapeDtypeStruct(attrs.shape, jnp.float32),
            [attrs_spec, image_spec, last_spec, image_spec], attrs_spec, "headsup_composite_bwd",
            attrs, out, last, d_out, grads=True)

    pixels = lambda x: x.reshape(x.shape[0], -1, rows, lanes)
    grads = _tiles_of_all_batches(backward)(attrs.astype(jnp.float32), pixels(out),
                                            last.reshape(last.shape[0], rows, lanes),
                                            pixels(d_out.astype(jnp.float32)))
    return grads.astype(attrs.dtype)
