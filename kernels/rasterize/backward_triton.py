"""Pallas (Triton backend) backward kernel of the rasterizer (contract: ``reference.backward_xla``).

One program per 16x16 tile walks the tile's list back to front in chunks of ``config.backward_chunk`` entries,
rebuilding T before each entry from the saved final T and carrying the suffix sum of weight x cotangent (no
per-pixel list is stored). Blocks are (256, chunk), so the 10 sums over the 256 pixels per Gaussian are mostly
within each thread (and one cross-warp step), at the price of cross-lane scans over the chunk. Per-Gaussian
gradients are summed over tiles with relaxed fp32 atomic adds (``geolrm_kernels.atomics``) into (10, N):
memory O(N), order-nondeterministic in the last bits, like the CUDA rasterizer.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.atomics import gradient_atomic_add
from geolrm_kernels.rasterize import triton_common as tc
from geolrm_kernels.rasterize.config import DEFAULT_CONFIG, RasterizeConfig
from geolrm_kernels.rasterize.reference import ALPHA_MAX, ALPHA_MIN, NUM_FEATURES, TileImage, tiles_grid
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _backward_kernel(start_ref, end_ref, ids_ref, feats_ref, trans_ref, last_ref, gc0_ref, gc1_ref, gc2_ref,
                     gw_ref, gd_ref, gt_ref, zeros_ref, out_ref, *, grid_x: int, height: int, width: int, chunk: int,
                     cuda_gradient: bool, num: int, atomic_add):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, _ = tc.pixel_coords(t, grid_x, height, width)
    trans, last = trans_ref[...], last_ref[...]
    g_c = (gc0_ref[...], gc1_ref[...], gc2_ref[...])
    g_w, g_d = gw_ref[...], gd_ref[...]
    num_chunks = (jnp.maximum(jnp.max(last) - start, 0) + chunk - 1) // chunk
    load = functools.partial(tc.load_chunk, ids_ref, feats_ref, start, end, chunk=chunk)
    gaxis = 1  # (256, chunk) blocks: the sums over the pixels stay mostly within a thread
    pix, gau = tc.broadcasts(gaxis)

    def body(i, s):
        t_after, suffix, ahead = s
        k = num_chunks - 1 - i
        pos, in_list, f, gid = ahead
        ahead = load(k - 1)  # the next chunk's loads are issued before this chunk is computed
        dx, dy, power, gauss, raw, alpha = tc.gaussian_alpha(f, px, py, gaxis)
        keep = gau(in_list) & (gau(pos) < pix(last)) & (power <= 0) & (alpha >= ALPHA_MIN)
        one_minus = jnp.where(keep, 1.0 - alpha, 1.0)
        log_keep = jnp.log(one_minus)
        total = jnp.sum(log_keep, axis=gaxis)
        # T before entry i = T after the chunk / prod_{j >= i} (1 - alpha_j).
        t_before = pix(t_after) * jnp.exp(jnp.cumsum(log_keep, axis=gaxis) - log_keep - pix(total))
        w = jnp.where(keep, alpha, 0.0) * t_before
        fval = (pix(g_c[0]) * gau(f[6]) + pix(g_c[1]) * gau(f[7]) + pix(g_c[2]) * gau(f[8]) + pix(g_w)
                + pix(g_d) * gau(f[9]))
        wf = w * fval
        wf_sum = jnp.sum(wf, axis=gaxis)
        later = pix(suffix + wf_sum) - jnp.cumsum(wf, axis=gaxis)
        d_alpha = jnp.where(keep, t_before * fval - later / one_minus, 0.0)
        d_raw = d_alpha if cuda_gradient else jnp.where(raw < ALPHA_MAX, d_alpha, 0.0)
        # d loss / d power = d_raw * o * G; the per-Gaussian factors (o, and the conic in the mean gradient) are
        # applied after the pixel sums of q = d_raw * G times 1, dx, dy, dx^2, dx dy, dy^2.
        q = d_raw * gauss
        qx, qy = q * dx, q * dy
        # Each product is built right before its sum (as traced), so only one (256, chunk) term is alive at a time.
        terms = [lambda: q, lambda: qx, lambda: qy, lambda: qx * dx, lambda: qx * dy, lambda: qy * dy]
        terms += [lambda g=g: w * pix(g) for g in (*g_c, g_d)]
        s0, sx, sy, sxx, sxy, syy, *g_rgbz = (jnp.sum(term(), axis=0) for term in terms)
        a, b, c, o = f[2:6]
        grads = (-o * (a * sx + b * sy), -o * (c * sy + b * sx), -0.5 * o * sxx, -o * sxy, -0.5 * o * syy, s0,
                 *g_rgbz)
        # Lanes past the list add their (zero) rows to distinct padding columns [num, num + chunk), so no mask
        # is needed (interpret mode has no masked atomics) and indices within one add are unique.
        target = jnp.where(in_list, gid, num + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0))
        for j, g in enumerate(grads):
            atomic_add(out_ref, (j, target), g)
        return t_after * jnp.exp(-total), suffix + wf_sum, ahead

    del zeros_ref  # aliased to out_ref: entries past a tile's last blended one keep their 0
    ahead = load(num_chunks - 1)
    jax.lax.fori_loop(0, num_chunks, body, (trans, trans * gt_ref[...], ahead))


def backward_pallas(feats, ids, tile_start, tile_end, out: TileImage, cot: TileImage, height: int, width: int,
                    cuda_gradient: bool, *, interpret: bool = False, config: RasterizeConfig = DEFAULT_CONFIG):
    """Pallas back-to-front backward; same contract as `reference.backward_xla`: d loss / d feats (N, 10)."""
    chunk = config.backward_chunk
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    num = feats.shape[0]
    rows = num + chunk
    kernel = functools.partial(_backward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk,
                               cuda_gradient=cuda_gradient, num=num, atomic_add=gradient_atomic_add())
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    result = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        in_specs=[pl.no_block_spec] * 4 + [tc.tile_spec()] * 8 + [pl.no_block_spec],
        out_shape=jax.ShapeDtypeStruct((NUM_FEATURES, rows), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=config.backward_num_warps, num_stages=1),
        interpret=interpret,
        # Zero-initialized output: entries past a tile's last blended one are never written.
        input_output_aliases={12: 0},
        name="splat_rasterize_backward",
    )(tile_start, tile_end, ids, f32(feats).T, f32(out.transmittance), out.last,
      *(f32(cot.color[..., j]) for j in range(3)), f32(cot.weight), f32(cot.depth), f32(cot.transmittance),
      jnp.zeros((NUM_FEATURES, rows), jnp.float32))
    return result[:, :num].T.astype(feats.dtype)
