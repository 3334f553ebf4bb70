"""Pure-jnp (XLA) reference of multi-view deformable sampling, forward and backward, and the bilinear-corner
convention shared with the Pallas kernels. Contract: see :mod:`geolrm_kernels.deformable`.

Neither direction materializes a Q x H x NL x P x C tensor: a ``lax.scan`` over the P points of each level
accumulates the (B, V, Q, H, C) output in fp32 (fp64 for fp64 inputs), and the hand-written backward scans the
points again, recomputing the samples and scatter-adding into d_value. Both are differentiable in forward mode,
which serves all derivatives but the first reverse-mode one (see ``geolrm_kernels.derivatives``).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

# Locations of masked (b, v, q) entries are replaced by this, which is outside every image for all four
# bilinear corners, so masked entries read nothing and get exactly zero gradients.
MASKED_LOCATION = -4.0


def level_starts(spatial_shapes):
    """First row of each level in the packed L axis."""
    sizes = [h * w for h, w in spatial_shapes]
    return tuple(int(s) for s in np.cumsum([0] + sizes[:-1]))


def bilinear_corners(u, v, height, width, *, clamp_pixels=True):
    """Corners of bilinear sampling at normalized (u, v) (same shapes, fp32) in a (height, width) map.

    Returns a list of 4 tuples (pixel index y*width + x clipped into the map, in-image bool, weight,
    d weight / d u, d weight / d v), with align_corners=False: x = u * width - 0.5. Shared by the reference
    and the Pallas kernels, so both use the same floor/one-sided-derivative convention at integer points.

    ``clamp_pixels=False`` (the GPU kernels): the pixel index is not clipped into the map, so it is only
    meaningful where the corner is in the image (every access is masked by ``inside``); the four corners'
    indices are then one conversion plus constants, and ``inside`` is the product of per-axis tests. The
    weights, their derivatives and ``inside`` are the same expressions either way.
    """
    x = u * width - 0.5
    y = v * height - 0.5
    # Clamping keeps the int cast defined; every corner of a clamped coordinate is outside the image anyway.
    x = jnp.clip(x, -2.0, width + 1.0)
    y = jnp.clip(y, -2.0, height + 1.0)
    x0f = jnp.floor(x)
    y0f = jnp.floor(y)
    fx = x - x0f
    fy = y - y0f
    if clamp_pixels:
        x0 = x0f.astype(jnp.int32)
        y0 = y0f.astype(jnp.int32)
    else:
        # y0f * width + x0f is an integer below 2**24 in magnitude: exact in fp32, one conversion.
        base = (y0f * width + x0f).astype(jnp.int32)
        in_x = ((x0f >= 0.0) & (x0f < width), (x0f >= -1.0) & (x0f < width - 1.0))
        in_y = ((y0f >= 0.0) & (y0f < height), (y0f >= -1.0) & (y0f < height - 1.0))
    corners = []
    for dy in (0, 1):
        for dx in (0, 1):
            if clamp_pixels:
                xi = x0 + dx
                yi = y0 + dy
                inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                pixel = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            else:
                inside = in_y[dy] & in_x[dx]
                pixel = base + (dy * width + dx)
            wx = fx if dx else 1.0 - fx
            wy = fy if dy else 1.0 - fy
            dwx = (1.0 if dx else -1.0) * wy * width
            dwy = (1.0 if dy else -1.0) * wx * height
            corners.append((pixel, inside, wx * wy, dwx, dwy))
    return corners


def _row_base(value_shape, level_start):
    """Row offsets into value reshaped to (B*V*L*H, C): row = ((b*V + v)*L + start + pixel)*H + h."""
    b, v, length, heads, _ = value_shape
    bv = jnp.arange(b * v, dtype=jnp.int32).reshape(b, v, 1, 1)
    hh = jnp.arange(heads, dtype=jnp.int32).reshape(1, 1, 1, heads)
    return (bv * length + level_start) * heads + hh, heads


def _per_level_points(offsets, attention_weights, level):
    """(P, B, Q, H, 2) offsets and (P, B, Q, H) weights of one level, point axis first for lax.scan."""
    return (jnp.moveaxis(offsets[:, :, :, level], 3, 0),
            jnp.moveaxis(attention_weights[:, :, :, level], 3, 0))


def _accumulation_dtype(*arrays):
    """float32, or float64 where an input is (jax_enable_x64: the references then compute in float64)."""
    return jnp.result_type(jnp.float32, *(x.dtype for x in arrays))


def _locations(reference_points, offset_p, mask):
    dtype = _accumulation_dtype(reference_points, offset_p)
    loc = reference_points[:, :, :, None, :].astype(dtype) + offset_p[:, None].astype(dtype)
    if mask is not None:
        loc = jnp.where(mask[..., None, None], loc, MASKED_LOCATION)
    return loc  # (B, V, Q, H, 2)


def reference_forward(value, reference_points, offsets, attention_weights, mask, spatial_shapes):
    """(B, V, Q, H, C) output in value.dtype; mask (B, V, Q) bool or None; spatial_shapes a tuple of (h, w)."""
    b, v, _, heads, c = value.shape
    q = reference_points.shape[2]
    flat_value = value.reshape(-1, c)
    acc_dtype = _accumulation_dtype(value, reference_points, offsets, attention_weights)
    out = jnp.zeros((b, v, q, heads, c), acc_dtype)
    for level, ((h, w), start) in enumerate(zip(spatial_shapes, level_starts(spatial_shapes), strict=True)):
        base, stride = _row_base(value.shape, start)

        def point_step(acc, xs, base=base, stride=stride, h=h, w=w):
            offset_p, weight_p = xs
            loc = _locations(reference_points, offset_p, mask)
            weight = weight_p[:, None].astype(acc_dtype)  # (B, 1, Q, H)
            for pixel, inside, bilinear, _, _ in bilinear_corners(loc[..., 0], loc[..., 1], h, w):
                coef = jnp.where(inside, weight * bilinear, 0.0)
                sample = jnp.take(flat_value, base + pixel * stride, axis=0).astype(acc_dtype)
                acc = acc + coef[..., None] * sample
            return acc, None

        out, _ = lax.scan(point_step, out, _per_level_points(offsets, attention_weights, level))
    if mask is not None:
        out = jnp.where(mask[:, :, :, None, None], out, 0.0)
    return out.astype(value.dtype)


def reference_backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g):
    """(d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes, for the output
    cotangent g (B, V, Q, H, C); the exact VJP of :func:`reference_forward`."""
    b, v, _, heads, c = value.shape
    flat_value = value.reshape(-1, c)
    acc_dtype = _accumulation_dtype(value, reference_points, offsets, attention_weights, g)
    g = g.astype(acc_dtype)
    if mask is not None:
        g = jnp.where(mask[:, :, :, None, None], g, 0.0)
    d_value = jnp.zeros(flat_value.shape, acc_dtype)
    d_ref = jnp.zeros(reference_points.shape, acc_dtype)
    d_offsets, d_weights = [], []
    for level, ((h, w), start) in enumerate(zip(spatial_shapes, level_starts(spatial_shapes), strict=True)):
        base, stride = _row_base(value.shape, start)

        def point_step(carry, xs, base=base, stride=stride, h=h, w=w):
            d_value, d_ref = carry
            offset_p, weight_p = xs
            loc = _locations(reference_points, offset_p, mask)
            weight = weight_p[:, None].astype(acc_dtype)  # (B, 1, Q, H)
            g_sample = g_du = g_dv = 0.0
            for pixel, inside, bilinear, dbdu, dbdv in bilinear_corners(loc[..., 0], loc[..., 1], h, w):
                rows = base + pixel * stride
                sample = jnp.take(flat_value, rows, axis=0).astype(acc_dtype)
                g_dot = jnp.where(inside, jnp.sum(g * sample, axis=-1), 0.0)  # (B, V, Q, H)
                g_sample = g_sample + bilinear * g_dot
                g_du = g_du + dbdu * g_dot
                g_dv = g_dv + dbdv * g_dot
                coef = jnp.where(inside, weight * bilinear, 0.0)
                d_value = d_value.at[rows.reshape(-1)].add((coef[..., None] * g).reshape(-1, c))
            d_loc = weight[..., None] * jnp.stack([g_du, g_dv], axis=-1)  # (B, V, Q, H, 2)
            d_ref = d_ref + jnp.sum(d_loc, axis=3)
            return (d_value, d_ref), (jnp.sum(d_loc, axis=1), jnp.sum(g_sample, axis=1))

        (d_value, d_ref), (d_off_l, d_w_l) = lax.scan(
            point_step, (d_value, d_ref), _per_level_points(offsets, attention_weights, level))
        d_offsets.append(jnp.moveaxis(d_off_l, 0, 3))  # (B, Q, H, P, 2)
        d_weights.append(jnp.moveaxis(d_w_l, 0, 3))  # (B, Q, H, P)
    return (d_value.reshape(value.shape).astype(value.dtype),
            d_ref.astype(reference_points.dtype),
            jnp.stack(d_offsets, axis=3).astype(offsets.dtype),
            jnp.stack(d_weights, axis=3).astype(attention_weights.dtype))
