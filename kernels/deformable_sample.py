"""Multi-view multi-scale deformable sampling (the cross-attention core of GeoLRM's reconstruction network).

Contract (fixed in the project's cross-helper contracts)::

    deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes,
                      view_mask=None, query_mask=None, *, implementation=None) -> (B, V, Q, H, C)

- ``value`` (B, V, L, H, C): per-view value maps, channel-last per head. L = sum of h_l * w_l over the levels,
  packed in the order of ``spatial_shapes``, each level row-major (y, x).
- ``spatial_shapes``: static tuple of (h, w) per level, e.g. ``((28, 28), (16, 16))``.
- ``reference_points`` (B, V, Q, 2): normalized (u, v) of each query in each view, u along the width.
- ``offsets`` (B, Q, H, NL, P, 2): offsets already divided by their level's (w, h); shared by all views.
- ``attention_weights`` (B, Q, H, NL, P): already softmaxed over NL * P; shared by all views.
- location = reference_points[b, v, q] + offsets[b, q, h, l, p]; bilinear sampling with zero padding and
  ``align_corners=False`` semantics (pixel x = u * w_l - 0.5, y = v * h_l - 0.5), accumulated in fp32:
  ``out[b, v, q, h] = sum_{l, p} attention_weights[b, q, h, l, p] * sample(value[b, v, level l, :, h], loc)``.
- ``view_mask`` (B, V) / ``query_mask`` (B, Q) bool: masked (b, v, q) entries give 0 output and 0 gradients
  (their locations are never read, so NaN/inf reference points there are harmless).
- Output dtype = ``value.dtype``; derivatives for value, reference_points, offsets and attention_weights (in
  their input dtypes) by every JAX transform: ``grad`` runs the implementation's backward kernels, forward mode
  and higher orders the XLA reference in forward mode (``DEFORMABLE_SAMPLE``, see ``derivatives``).

Implementations (``implementation=``):

- ``"xla"``: :func:`deformable_sample_reference`, pure jnp. It never materializes a Q x H x NL x P x C tensor:
  a ``lax.scan`` over the P points of each level accumulates the (B, V, Q, H, C) output in fp32 (fp64 for
  fp64 inputs), and the hand-written backward scans the points again, recomputing the samples and
  scatter-adding into d_value. Both are differentiable in forward mode, which serves all derivatives but the
  first reverse-mode one.
- ``"pallas"``: Pallas kernels on the Triton backend (``deformable_sample_triton.py``): gathers by indexed
  loads; the backward loops over the views in registers for d_offsets / d_attention_weights /
  d_reference_points and accumulates d_value with relaxed fp32 atomic adds.
- ``"pallas_xla_backward"``: the Pallas forward with the XLA reference's backward (GPU).
- ``"pallas_interpret"``: the Pallas kernels run by the Pallas interpreter (CPU tests).
- ``"pallas_tpu"``: Pallas Mosaic kernels for TPU (``geolrm_kernels.tpu``): Mosaic has no per-lane gather,
  so the bilinear samples are matmuls of tent-window weights with DMA'd value chunks (docs/tpu.md).
- ``"pallas_tpu_interpret"``: those kernels run by the Pallas (HLO) interpreter, under any transform (CPU tests).
- ``None``: GPU -> ``GPU_DEFAULT_IMPLEMENTATION`` (the fastest measured combination); TPU -> ``"pallas_tpu"``;
  CPU -> ``"xla"``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from geolrm_kernels.derivatives import DerivativeFamily
from jax import lax

IMPLEMENTATIONS = ("xla", "pallas", "pallas_xla_backward", "pallas_interpret", "pallas_tpu", "pallas_tpu_interpret")
# What implementation=None runs on GPU: the fastest correct combination measured by
# tools/bench_deformable.py at the model's shapes (H100, 2026-11-25 04:22 UTC, fwd+bwd at V=21, 140^2+80^2,
# S=16384, model-like SV3D points: "pallas" 37.1 ms, "pallas_xla_backward" 83.4 ms, "xla" 95.9 ms; random
# points: 93.1 / 99.4 / 111.3 ms; see docs/deformable.md, "Performance").
GPU_DEFAULT_IMPLEMENTATION = "pallas"
# TPU kernels (geolrm_kernels.tpu, docs/tpu.md); "pallas_tpu_interpret" runs them in the Pallas interpreter (tests).
TPU_IMPLEMENTATIONS = ("pallas_tpu", "pallas_tpu_interpret")
# Locations of masked (b, v, q) entries are replaced by this, which is outside every image for all four
# bilinear corners, so masked entries read nothing and get exactly zero gradients.
_MASKED_LOCATION = -4.0


def _level_starts(spatial_shapes):
    sizes = [h * w for h, w in spatial_shapes]
    return tuple(int(s) for s in np.cumsum([0] + sizes[:-1]))


def validate_inputs(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask, query_mask):
    """Checks shapes against the contract; returns (spatial_shapes as a tuple of int pairs, combined mask).

    The combined mask is (B, V, Q) bool (view_mask & query_mask), or None when neither is given.
    """
    try:
        shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spatial_shapes must be a static sequence of (h, w) pairs, got {spatial_shapes!r}") from e
    if value.ndim != 5:
        raise ValueError(f"value must be (B, V, L, H, C), got shape {value.shape}")
    b, v, length, heads, _ = value.shape
    if length != sum(h * w for h, w in shapes):
        raise ValueError(f"value L={length} != sum of h*w over spatial_shapes {shapes}")
    if reference_points.ndim != 4 or reference_points.shape[:2] != (b, v) or reference_points.shape[3] != 2:
        raise ValueError(f"reference_points must be (B={b}, V={v}, Q, 2), got {reference_points.shape}")
    q = reference_points.shape[2]
    nl = len(shapes)
    if offsets.ndim != 6 or offsets.shape[:4] != (b, q, heads, nl) or offsets.shape[5] != 2:
        raise ValueError(f"offsets must be (B={b}, Q={q}, H={heads}, NL={nl}, P, 2), got {offsets.shape}")
    p = offsets.shape[4]
    if attention_weights.shape != (b, q, heads, nl, p):
        raise ValueError(f"attention_weights must be {(b, q, heads, nl, p)}, got {attention_weights.shape}")
    mask = None
    if view_mask is not None:
        if view_mask.shape != (b, v):
            raise ValueError(f"view_mask must be (B={b}, V={v}), got {view_mask.shape}")
        mask = jnp.broadcast_to(view_mask.astype(bool)[:, :, None], (b, v, q))
    if query_mask is not None:
        if query_mask.shape != (b, q):
            raise ValueError(f"query_mask must be (B={b}, Q={q}), got {query_mask.shape}")
        qm = jnp.broadcast_to(query_mask.astype(bool)[:, None, :], (b, v, q))
        mask = qm if mask is None else mask & qm
    return shapes, mask


# ----------------------------------------------------------------------------------------------------------
# XLA reference
# ----------------------------------------------------------------------------------------------------------
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
        loc = jnp.where(mask[..., None, None], loc, _MASKED_LOCATION)
    return loc  # (B, V, Q, H, 2)


def _reference_forward(value, reference_points, offsets, attention_weights, mask, spatial_shapes):
    b, v, _, heads, c = value.shape
    q = reference_points.shape[2]
    flat_value = value.reshape(-1, c)
    acc_dtype = _accumulation_dtype(value, reference_points, offsets, attention_weights)
    out = jnp.zeros((b, v, q, heads, c), acc_dtype)
    for level, ((h, w), start) in enumerate(zip(spatial_shapes, _level_starts(spatial_shapes), strict=True)):
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


def _reference_backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g):
    b, v, _, heads, c = value.shape
    flat_value = value.reshape(-1, c)
    acc_dtype = _accumulation_dtype(value, reference_points, offsets, attention_weights, g)
    g = g.astype(acc_dtype)
    if mask is not None:
        g = jnp.where(mask[:, :, :, None, None], g, 0.0)
    d_value = jnp.zeros(flat_value.shape, acc_dtype)
    d_ref = jnp.zeros(reference_points.shape, acc_dtype)
    d_offsets, d_weights = [], []
    for level, ((h, w), start) in enumerate(zip(spatial_shapes, _level_starts(spatial_shapes), strict=True)):
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


# ----------------------------------------------------------------------------------------------------------
# The op: derivative primitives shared by every implementation
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Spec:
    implementation: str
    spatial_shapes: tuple


def _unpack(spec, xs, aux):
    value, reference_points, offsets, attention_weights = xs
    mask, order = (aux[0], aux[1] if len(aux) > 1 else None)
    return value, reference_points, offsets, attention_weights, mask, spec.spatial_shapes, order


def _kernel_forward(spec, xs, aux):
    value, reference_points, offsets, attention_weights, mask, shapes, order = _unpack(spec, xs, aux)
    if spec.implementation == "xla":
        return (_reference_forward(value, reference_points, offsets, attention_weights, mask, shapes),)
    if spec.implementation in TPU_IMPLEMENTATIONS:  # TPU (Mosaic) kernels: geolrm_kernels.tpu
        from geolrm_kernels.tpu import deformable_forward

        interpret = "hlo" if spec.implementation == "pallas_tpu_interpret" else False
        return (deformable_forward.forward(value, reference_points, offsets, attention_weights, mask, shapes, order,
                                           interpret=interpret),)
    from geolrm_kernels import deformable_sample_triton as tri

    return (tri.forward(value, reference_points, offsets, attention_weights, mask, shapes,
                        interpret=spec.implementation == "pallas_interpret", order=order),)


def _kernel_backward(spec, xs, aux, saved, cotangents):
    value, reference_points, offsets, attention_weights, mask, shapes, order = _unpack(spec, xs, aux)
    if spec.implementation in ("xla", "pallas_xla_backward"):
        return _reference_backward(value, reference_points, offsets, attention_weights, mask, shapes, cotangents[0])
    if spec.implementation in TPU_IMPLEMENTATIONS:
        from geolrm_kernels.tpu import deformable_backward

        return deformable_backward.backward(value, reference_points, offsets, attention_weights, mask, shapes,
                                            cotangents[0], order,
                                            interpret="hlo" if spec.implementation == "pallas_tpu_interpret" else False)
    from geolrm_kernels import deformable_sample_triton as tri

    return tri.backward(value, reference_points, offsets, attention_weights, mask, shapes, cotangents[0],
                        interpret=spec.implementation == "pallas_interpret", order=order)


def _output_shapes(spec, xs, aux):
    value, reference_points = xs[0], xs[1]
    return (jax.ShapeDtypeStruct((*value.shape[:2], reference_points.shape[2], *value.shape[3:]), value.dtype),)


# Primal and gradient from the implementation's kernels; forward mode and higher orders from the XLA reference
# (see geolrm_kernels.derivatives). All operands have the scene axis B first, so vmap folds into it.
DEFORMABLE_SAMPLE = DerivativeFamily(
    name="deformable_sample",
    forward=_kernel_forward,
    backward=_kernel_backward,
    reference_forward=lambda spec, xs, aux: (_reference_forward(*_unpack(spec, xs, aux)[:6]),),
    reference_backward=lambda spec, xs, aux, cots: _reference_backward(*_unpack(spec, xs, aux)[:6], cots[0]),
    output_shapes=_output_shapes,
    differentiable_outputs=(0,),
)


def default_implementation() -> str:
    """GPU -> GPU_DEFAULT_IMPLEMENTATION; TPU -> "pallas_tpu"; CPU and anything else -> "xla"."""
    backend = jax.default_backend()
    if backend == "tpu":
        return "pallas_tpu"
    return GPU_DEFAULT_IMPLEMENTATION if backend in ("gpu", "cuda", "rocm") else "xla"


def kernel_query_order(reference_points, view_mask=None, query_mask=None, *, implementation=None):
    """The order in which the GPU kernels visit the queries (speed only; see
    ``deformable_sample_triton.spatial_query_order``), (B, Q) int32, or None where the implementation uses
    none (XLA). Compute it once and pass it as ``query_order=`` to every :func:`deformable_sample` call that
    shares these reference points and masks, e.g. all layers of a transformer: it costs a sort per call."""
    implementation = implementation or default_implementation()
    if implementation == "xla":
        return None
    from geolrm_kernels import deformable_sample_triton as tri

    b, v, q = reference_points.shape[:3]
    mask = jnp.ones((b, v, q), bool)
    if view_mask is not None:
        mask &= view_mask[:, :, None]
    if query_mask is not None:
        mask &= query_mask[:, None, :]
    return tri.resolve_query_order(None, reference_points, mask, None)


def deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask=None,
                      query_mask=None, *, implementation=None, query_order=None):
    """Multi-view deformable bilinear sampling; see the module docstring for shapes and conventions.

    Returns (B, V, Q, H, C) in ``value.dtype``. ``query_order`` (B, Q) int32: the kernels' visiting order
    from :func:`kernel_query_order` (a permutation of the queries; only the speed depends on it), else computed
    here when the implementation uses one.
    """
    shapes, mask = validate_inputs(value, reference_points, offsets, attention_weights, spatial_shapes,
                                   view_mask, query_mask)
    if implementation is None:
        implementation = default_implementation()
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None, got {implementation!r}")
    if mask is None:
        mask = jnp.ones(reference_points.shape[:3], bool)
    if query_order is not None and query_order.shape != mask.shape[:1] + mask.shape[2:]:
        raise ValueError(f"query_order must be (B, Q) = {mask.shape[:1] + mask.shape[2:]}, got {query_order.shape}")
    aux = (mask,)
    if implementation != "xla":  # one order for the forward and the backward kernel
        from geolrm_kernels import deformable_sample_triton as tri

        aux += (tri.resolve_query_order(query_order, lax.stop_gradient(reference_points), mask, None),)
    return DEFORMABLE_SAMPLE(_Spec(implementation, shapes), (value, reference_points, offsets, attention_weights),
                             aux)[0]


def deformable_sample_reference(value, reference_points, offsets, attention_weights, spatial_shapes,
                                view_mask=None, query_mask=None):
    """Pure-jnp (XLA) deformable sampling with the same contract as :func:`deformable_sample`.

    Never materializes a Q x H x NL x P x C tensor: forward and backward scan over the sample points.
    """
    return deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask,
                             query_mask, implementation="xla")
