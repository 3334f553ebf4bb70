"""Pallas (Triton backend) kernel of the tile-intersection stage (``geolrm_jax.render.tiles``): the sort key of
every (Gaussian, tile) slot, written per Gaussian."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _tile_keys_kernel(first_ref, count_ref, base_ref, width_ref, rank_ref, init_ref, keys_ref, *, num: int,
                      block: int, grid_x: int, rank_bits: int, capacity: int):
    del init_ref  # aliased to keys_ref: slots no Gaussian writes keep their all-ones key
    g = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
    valid = g < num
    first, count, base, width, rank = (plgpu.load(r.at[g], mask=valid, other=0)
                                       for r in (first_ref, count_ref, base_ref, width_ref, rank_ref))

    def body(i, carry):
        slot = first + i
        tile = base + (i // width) * grid_x + i % width
        key = (tile.astype(jnp.uint32) << rank_bits) | rank.astype(jnp.uint32)
        plgpu.store(keys_ref.at[slot], key, mask=(i < count) & (slot < capacity))
        return carry

    jax.lax.fori_loop(0, jnp.max(count), body, 0)


def tile_keys(first, count, base, width, rank, capacity: int, grid_x: int, rank_bits: int, *,
              interpret: bool = False, block: int = 128):
    """The (capacity,) uint32 sort keys `tile << rank_bits | depth rank` of every (Gaussian, tile) slot.

    Per Gaussian (each (N,) int32): first slot, number of tiles, first tile (y0 * grid_x + x0), rectangle width
    (>= 1) and depth rank; Gaussian g owns slots [first, first + count), enumerating its rectangle row-major.
    One program per `block` Gaussians loops over its largest count, writing one key per Gaussian and step.
    Slots past the total (or Gaussians past the capacity) keep the all-ones key.
    """
    num = first.shape[0]
    kernel = functools.partial(_tile_keys_kernel, num=num, block=block, grid_x=grid_x, rank_bits=rank_bits,
                               capacity=capacity)
    return pl.pallas_call(
        kernel,
        grid=(pl.cdiv(num, block),),
        in_specs=[pl.no_block_spec] * 6,
        out_shape=jax.ShapeDtypeStruct((capacity,), jnp.uint32),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        input_output_aliases={5: 0},
        name="splat_tile_keys",
    )(*(x.astype(jnp.int32) for x in (first, count, base, width, rank)),
      jnp.full((capacity,), 0xFFFFFFFF, jnp.uint32))
