"""Pallas (Triton backend) kernels for the splatter's rasterization stage, forward and backward.

One program per 16x16 tile (a 256-pixel vector per program); the tile's depth-sorted list
`ids[tile_start[t]:tile_end[t]]` is walked in chunks of entries, gathering the per-Gaussian features (10, N) in
the kernel (the next chunk's loads are issued before the current chunk is computed). Inside a chunk the
sequential compositing rule (skip alpha < 1/255, stop before blending when T (1 - alpha) < 1e-4) is evaluated in
closed form with a cumulative sum of log(1 - alpha) (Triton has a cumsum scan but no cumprod). A tile stops as
soon as all its pixels are done.

Block layouts (Triton spreads a block's last axis over the lanes of a warp): the forward works on
(CHUNK, 256) blocks, so its scan and its sums over the chunk (colour, weight, depth, T, counts) run within each
thread; the backward works on (256, BACKWARD_CHUNK) blocks, so that its 10 sums over the 256 pixels per Gaussian
are mostly within each thread (and one cross-warp step), at the price of cross-lane scans over the chunk.

The backward walks the chunks back to front, rebuilding T before each entry from the saved final T and carrying
the suffix sum of weight x cotangent (no per-pixel list is stored). Per-Gaussian gradients are summed over tiles
with relaxed atomic adds into (10, N) (default), or, with ACCUMULATE = "segment", written as one row per list
entry (10, capacity) and summed deterministically with a segment sum in XLA.

`tile_keys` is the intersection stage's key writer (see `geolrm_jax.render.tiles`).

Contracts are those of `geolrm_jax.render.rasterize` (`forward_xla` / `backward_xla`); `rasterize` below is the
differentiable entry point (`geolrm_jax.render.rasterize.rasterize_tiles`: these kernels serve its primal and
gradient, forward mode and higher orders run the XLA path in forward mode) with implementation "pallas" (GPU)
or "pallas_interpret" (any backend, for tests), and `rasterize_reference` is the pure-jnp path with the same
contract.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from geolrm_jax.render.projection import TILE_SIZE, tiles_grid
from geolrm_jax.render.rasterize import (
    ALPHA_MAX,
    ALPHA_MIN,
    NUM_FEATURES,
    PIXELS,
    T_MIN,
    TileImage,
    forward_xla,
    rasterize_tiles,
)

# List entries per step and warps per program (one 16x16 tile); read at trace time, so a benchmark can sweep them.
# H100, 512k Gaussians, 8 x 448² (docs/splatter.md): forward chunks of 8 (4 warps) and backward chunks of 16
# (8 warps) were the fastest of those swept (forward chunks of 16: 0.5-1 ms slower fwd+bwd in three runs).
CHUNK = 8
BACKWARD_CHUNK = 16
NUM_WARPS = 4
BACKWARD_NUM_WARPS = 8
# How the backward sums the per-(tile, Gaussian) gradient rows: "atomic" adds them into (10, N) with atomics
# (memory O(N), order-nondeterministic in the last bits, like the CUDA rasterizer); "segment" writes one row
# per list entry (10, capacity) and sums with a segment sum in XLA (deterministic, memory O(capacity)).
ACCUMULATE = "atomic"
# Benchmark switches: relaxed atomics (Pallas' own atomic_add is acquire-release) and the next-chunk prefetch.
RELAXED_ATOMICS = True
PREFETCH = True


def _relaxed_atomic_add():
    """`plgpu.atomic_add` with relaxed memory order (a fire-and-forget `red` instead of an acquire-release
    `atom`), as a copy of Pallas' atomic primitive whose Triton lowering asks for MemSemantic.RELAXED.

    Uses Pallas internals; returns None when they are not there (then the acquire-release add is used)."""
    try:
        from jax._src import core as jax_core
        from jax._src import tree_util
        from jax._src.lib.triton import dialect as tt_dialect
        from jax._src.pallas.triton import lowering as tl
        from jax._src.pallas.triton import primitives as tp
        from jax._src.state import discharge as state_discharge
        from jax._src.state import primitives as state_primitives

        prim = jax_core.Primitive("splat_atomic_add_relaxed")
        prim.def_effectful_abstract_eval(tp._atomic_abstract_eval)
        state_discharge.register_discharge_rule(prim)(tp._atomic_rmw_discharge_rule)
        relaxed = functools.partial(tl._atomic_rmw, semantic=tt_dialect.MemSemantic.RELAXED)

        # Pallas' own rule, with its module's _atomic_rmw (which it calls) swapped for the relaxed one while it
        # runs (lowering is single-threaded; an atomic lowered concurrently in another thread would be relaxed too).
        def lowering(ctx, *args, **params):
            acq_rel, tl._atomic_rmw = tl._atomic_rmw, relaxed
            try:
                return tp._atomic_lowering_rule(ctx, *args, **params)
            finally:
                tl._atomic_rmw = acq_rel

        tl.register_lowering(prim)(lowering)

        def add(ref, idx, val):
            x_ref, transforms = state_primitives.get_ref_and_transforms(ref, idx, "atomic_rmw")
            flat, tree = tree_util.tree_flatten((x_ref, transforms, val, None))
            return prim.bind(*flat, args_tree=tree, atomic_type=tp.AtomicOpType.ADD)

        return add
    except (ImportError, AttributeError, TypeError):
        return None


_ATOMIC_ADD_RELAXED = _relaxed_atomic_add()


def _pixel_coords(t, grid_x: int, height: int, width: int):
    p = jax.lax.broadcasted_iota(jnp.int32, (PIXELS,), 0)
    px = (t % grid_x) * TILE_SIZE + p % TILE_SIZE
    py = (t // grid_x) * TILE_SIZE + p // TILE_SIZE
    inside = (px < width) & (py < height)
    return px.astype(jnp.float32), py.astype(jnp.float32), inside


def _load_chunk(ids_ref, feats_ref, start, end, k, chunk: int):
    """Positions (chunk,), in-list mask, the 10 feature vectors (chunk,) and the ids of entries start + k*chunk..."""
    pos = start + k * chunk + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    in_list = (pos < end) & (pos >= start)
    gid = plgpu.load(ids_ref.at[pos], mask=in_list, other=0)
    feats = tuple(plgpu.load(feats_ref.at[j, gid], mask=in_list, other=0.0) for j in range(NUM_FEATURES))
    return pos, in_list, feats, gid


def _broadcasts(gaxis: int):
    """(per-pixel, per-Gaussian) vector -> 2D block broadcasts, for blocks with the Gaussians on axis gaxis."""
    lanes, rows = (lambda x: x[None, :]), (lambda x: x[:, None])
    return (rows, lanes) if gaxis == 1 else (lanes, rows)


def _alpha(feats, px, py, gaxis: int = 1):
    pix, gau = _broadcasts(gaxis)
    mx, my, a, b, c, o = (gau(x) for x in feats[:6])
    dx, dy = mx - pix(px), my - pix(py)
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    gauss = jnp.exp(power)
    raw = o * gauss
    return dx, dy, power, gauss, raw, jnp.minimum(raw, ALPHA_MAX)


def _forward_kernel(start_ref, end_ref, ids_ref, feats_ref, c0_ref, c1_ref, c2_ref, w_ref, d_ref, t_ref,
                    last_ref, count_ref, stop_ref, *, grid_x: int, height: int, width: int, chunk: int,
                    prefetch: bool):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, inside = _pixel_coords(t, grid_x, height, width)
    gaxis = 0  # (chunk, 256) blocks: everything along the chunk stays within a thread
    pix, gau = _broadcasts(gaxis)
    zeros = jnp.zeros((PIXELS,), jnp.float32)
    izeros = jnp.zeros((PIXELS,), jnp.int32)
    num_chunks = (end - start + chunk - 1) // chunk
    load = functools.partial(_load_chunk, ids_ref, feats_ref, start, end, chunk=chunk)
    sums = (zeros,) * 5  # colour (3), weight, depth
    init = (jnp.int32(0), load(0)[:3] if prefetch else (), zeros + 1.0, sums, izeros, izeros, izeros,
            jnp.where(inside, 0, 1))

    def cond(s):
        return (s[0] < num_chunks) & (jnp.min(s[-1]) == 0)

    def body(s):
        k, ahead, trans, sums, last, count, stopped, done = s
        pos, in_list, f = ahead if prefetch else load(k)[:3]
        ahead = load(k + 1)[:3] if prefetch else ()
        _, _, power, _, _, alpha = _alpha(f, px, py, gaxis)
        m = gau(in_list) & (power <= 0) & (alpha >= ALPHA_MIN) & (pix(done) == 0)
        log_1m = jnp.where(m, jnp.log(1.0 - alpha), 0.0)
        cum = jnp.cumsum(log_1m, axis=gaxis)
        t_incl = pix(trans) * jnp.exp(cum)
        # T after each blended entry only decreases along the chunk, so "no stop before j and none at j" is
        # simply T_incl(j) >= 1e-4; and for those entries the cumulative sum equals that of the kept entries.
        keep = m & (t_incl >= T_MIN)
        w = jnp.where(keep, alpha, 0.0) * pix(trans) * jnp.exp(cum - log_1m)
        stop = jnp.max((m & ~keep).astype(jnp.int32), axis=gaxis)
        sums = tuple(acc + jnp.sum(w if v is None else w * gau(v), axis=gaxis)
                     for acc, v in zip(sums, (f[6], f[7], f[8], None, f[9]), strict=True))
        return (k + 1, ahead, trans * jnp.exp(jnp.sum(jnp.where(keep, log_1m, 0.0), axis=gaxis)), sums,
                jnp.maximum(last, jnp.max(jnp.where(keep, gau(pos) + 1, 0), axis=gaxis)),
                count + jnp.sum(keep, axis=gaxis, dtype=jnp.int32), jnp.maximum(stopped, stop),
                jnp.maximum(done, stop))

    _, _, trans, sums, last, count, stopped, _ = jax.lax.while_loop(cond, body, init)
    for ref, val in ((c0_ref, sums[0]), (c1_ref, sums[1]), (c2_ref, sums[2]), (w_ref, sums[3]), (d_ref, sums[4]),
                     (t_ref, trans), (last_ref, last), (count_ref, count), (stop_ref, stopped)):
        ref[...] = val


def _tile_spec():
    return pl.BlockSpec((None, PIXELS), lambda t: (t, 0))


def forward_pallas(feats, ids, tile_start, tile_end, height: int, width: int, *, interpret: bool = False,
                   chunk: int | None = None) -> TileImage:
    """Pallas forward over all tiles of one camera; same contract as `forward_xla` (chunk None = CHUNK)."""
    chunk = chunk or CHUNK
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    f32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.float32)
    i32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.int32)
    kernel = functools.partial(_forward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk,
                               prefetch=PREFETCH)
    outs = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        out_shape=[f32] * 6 + [i32] * 3,
        out_specs=[_tile_spec()] * 9,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="splat_rasterize_forward",
    )(tile_start, tile_end, ids, feats.astype(jnp.float32).T)
    c0, c1, c2, wsum, dsum, trans, last, count, stopped = outs
    return TileImage(color=jnp.stack([c0, c1, c2], -1), weight=wsum, depth=dsum, transmittance=trans,
                     last=last, count=count, stopped=stopped.astype(bool))


def _backward_kernel(start_ref, end_ref, ids_ref, feats_ref, trans_ref, last_ref, gc0_ref, gc1_ref, gc2_ref,
                     gw_ref, gd_ref, gt_ref, zeros_ref, out_ref, *, grid_x: int, height: int, width: int, chunk: int,
                     cuda_gradient: bool, atomic: bool, num: int, prefetch: bool, atomic_add):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, _ = _pixel_coords(t, grid_x, height, width)
    trans, last = trans_ref[...], last_ref[...]
    g_c = (gc0_ref[...], gc1_ref[...], gc2_ref[...])
    g_w, g_d = gw_ref[...], gd_ref[...]
    num_chunks = (jnp.maximum(jnp.max(last) - start, 0) + chunk - 1) // chunk
    load = functools.partial(_load_chunk, ids_ref, feats_ref, start, end, chunk=chunk)
    gaxis = 1  # (256, chunk) blocks: the sums over the pixels stay mostly within a thread
    pix, gau = _broadcasts(gaxis)

    def body(i, s):
        t_after, suffix, ahead = s
        k = num_chunks - 1 - i
        pos, in_list, f, gid = ahead if prefetch else load(k)
        ahead = load(k - 1) if prefetch else ()
        dx, dy, power, gauss, raw, alpha = _alpha(f, px, py, gaxis)
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
            if atomic:
                atomic_add(out_ref, (j, target), g)
            else:
                plgpu.store(out_ref.at[j, pos], g, mask=in_list)
        return t_after * jnp.exp(-total), suffix + wf_sum, ahead

    del zeros_ref  # aliased to out_ref: entries past a tile's last blended one keep their 0
    ahead = load(num_chunks - 1) if prefetch else ()
    jax.lax.fori_loop(0, num_chunks, body, (trans, trans * gt_ref[...], ahead))


def backward_pallas(feats, ids, tile_start, tile_end, out: TileImage, cot: TileImage, height: int, width: int,
                    cuda_gradient: bool, *, interpret: bool = False, chunk: int | None = None,
                    accumulate: str | None = None):
    """Pallas back-to-front backward; same contract as `backward_xla`: d loss / d feats (N, 10).

    accumulate: "atomic" or "segment" (see `ACCUMULATE`, the default); chunk None = BACKWARD_CHUNK.
    """
    chunk = chunk or BACKWARD_CHUNK
    accumulate = accumulate or ACCUMULATE
    if accumulate not in ("atomic", "segment"):
        raise ValueError(f"accumulate must be 'atomic' or 'segment', got {accumulate!r}")
    atomic = accumulate == "atomic"
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    capacity, num = ids.shape[0], feats.shape[0]
    rows = num + chunk if atomic else capacity
    atomic_add = _ATOMIC_ADD_RELAXED if RELAXED_ATOMICS and _ATOMIC_ADD_RELAXED else plgpu.atomic_add
    kernel = functools.partial(_backward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk,
                               cuda_gradient=cuda_gradient, atomic=atomic, num=num, prefetch=PREFETCH,
                               atomic_add=atomic_add)
    f32 = lambda x: x.astype(jnp.float32)
    result = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        in_specs=[pl.no_block_spec] * 4 + [_tile_spec()] * 8 + [pl.no_block_spec],
        out_shape=jax.ShapeDtypeStruct((NUM_FEATURES, rows), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=BACKWARD_NUM_WARPS, num_stages=1),
        interpret=interpret,
        # Zero-initialized output: entries past a tile's last blended one are never written.
        input_output_aliases={12: 0},
        name="splat_rasterize_backward",
    )(tile_start, tile_end, ids, f32(feats).T, f32(out.transmittance), out.last,
      *(f32(cot.color[..., j]) for j in range(3)), f32(cot.weight), f32(cot.depth), f32(cot.transmittance),
      jnp.zeros((NUM_FEATURES, rows), jnp.float32))
    if atomic:
        return result[:, :num].T.astype(feats.dtype)
    used = jnp.arange(capacity) < jnp.max(tile_end)
    per_entry = jnp.where(used[None, :], result, 0.0).T
    grads = jax.ops.segment_sum(per_entry, jnp.where(used, ids, 0), num_segments=num)
    return grads.astype(feats.dtype)


def rasterize(feats, ids, tile_start, tile_end, height: int, width: int, *, cuda_gradient: bool = False,
              interpret: bool = False) -> TileImage:
    """Differentiable rasterization of one camera with the Pallas kernels (see module doc)."""
    return rasterize_tiles(feats, ids, tile_start, tile_end, height, width, cuda_gradient,
                           "pallas_interpret" if interpret else "pallas")


def rasterize_reference(feats, ids, tile_start, tile_end, height: int, width: int) -> TileImage:
    """Pure-jnp forward with the same contract (the XLA path of geolrm_jax.render.rasterize)."""
    return forward_xla(feats, ids, tile_start, tile_end, height, width)


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
