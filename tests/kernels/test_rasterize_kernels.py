"""The rasterizer's Pallas kernels lowered for CUDA (no GPU needed): the backward adds its per-Gaussian
gradients with relaxed fp32 atomics only (geolrm_kernels.atomics). Their numbers are tested against the XLA path
through the splatter (tests/render/test_splat.py) and by tools/check_splat.py."""
import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
from geolrm_kernels import atomics
from geolrm_kernels.rasterize import backward_triton
from geolrm_kernels.rasterize.reference import PIXELS, TileImage, tiles_grid
from jax.experimental import pallas as pl


def test_backward_adds_gradients_with_relaxed_atomics_only(monkeypatch):
    assert atomics.relaxed_atomics_status() == (True, None)  # its self-test (cached) lowers a kernel of its own
    monkeypatch.setattr(pl, "pallas_call", functools.partial(pl.pallas_call, debug=True))  # prints the Triton IR
    num, capacity, size = 64, 256, 32
    grid_x, grid_y = tiles_grid(size, size)
    tiles = grid_x * grid_y
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    out = TileImage(None, None, None, zeros(tiles, PIXELS), jnp.zeros((tiles, PIXELS), jnp.int32), None, None)
    cot = TileImage(zeros(tiles, PIXELS, 3), zeros(tiles, PIXELS), zeros(tiles, PIXELS), zeros(tiles, PIXELS),
                    None, None, None)
    lists = (jnp.zeros((capacity,), jnp.int32), jnp.zeros((tiles,), jnp.int32), jnp.zeros((tiles,), jnp.int32))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.jit(lambda feats: backward_triton.backward_pallas(feats, *lists, out, cot, size, size, False)).trace(
            zeros(num, 10)).lower(lowering_platforms=("cuda",))
    found = re.findall(r"tt\.atomic_rmw (\w+), (\w+),", printed.getvalue())
    # the ten per-Gaussian gradient rows (mean 2, conic 3, opacity, colour 3, depth) of a chunk
    assert found == [("fadd", "relaxed")] * 10, found
