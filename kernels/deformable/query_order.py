"""The order in which the deformable-sampling kernels visit queries: a 2-view Morton key of the reference
points. Only the speed depends on it (programs then read, and atomically add to, nearby pixels)."""
from __future__ import annotations

import jax.numpy as jnp


def morton_interleave(coords, bits):
    """Interleave the low `bits` bits of each int32 array in coords into one int32 code (coords[0] lowest)."""
    code = jnp.zeros(coords[0].shape, jnp.int32)
    for bit in range(bits):
        for j, c in enumerate(coords):
            code = code | (((c >> bit) & 1) << (len(coords) * bit + j))
    return code


def spatial_query_order(reference_points, mask):
    """(B, Q) int32 permutation of the queries that lists spatially close queries together.

    Key: Morton code of (u, v) in view 0 and u in view V // 4 (10 bits each): two views with different
    directions separate points that one view superimposes (front and back of an object), so the key
    approximates 3-D locality. Queries masked in both views go last. Only the speed depends on the order:
    the programs of a kernel then read and atomically add to nearby pixels (cache and atomic-unit locality).
    """
    b, v, q, _ = reference_points.shape
    views = (0, v // 4) if v > 1 else (0,)
    coords = []
    for i, view in enumerate(views):
        uv = jnp.where(mask[:, view, :, None], reference_points[:, view].astype(jnp.float32), 0.0)
        quantized = jnp.clip(jnp.nan_to_num(uv) * 1023.0, 0.0, 1023.0).astype(jnp.int32)
        coords += [quantized[..., 0], quantized[..., 1]] if i == 0 else [quantized[..., 0]]
    code = morton_interleave(coords, 10)
    code = jnp.where(jnp.any(mask[:, list(views)], axis=1), code, jnp.int32(2 ** 31 - 1))
    return jnp.argsort(code, axis=-1, stable=True).astype(jnp.int32)


def resolve_query_order(order, reference_points, mask, sort_queries: bool):
    """(B, Q) int32 visiting order of the kernels: ``order`` when given (precomputed, e.g. once for all layers of
    a transformer), else :func:`spatial_query_order` when ``sort_queries``, else the identity."""
    if order is not None:
        return order.astype(jnp.int32)
    if sort_queries:
        return spatial_query_order(reference_points, mask)
    b, q = mask.shape[0], mask.shape[2]
    return jnp.broadcast_to(jnp.arange(q, dtype=jnp.int32), (b, q))
