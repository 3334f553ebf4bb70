"""Cross-view softmax pooling: the last step of GeoLRM's multi-view deformable cross-attention.

    out[b, s] = Σ_v softmax_v(x[b, v, s] · w + bias) · x[b, v, s]        (over the views with view_mask True)

``x`` is the per-view sampled feature (B, V, S, D) that ``deformable_sample`` returns, ``w`` (D,) and ``bias`` the
original's ``cross_view_weight`` Linear(D, 1). Written as XLA ops this is two passes over ``x`` (a matrix-vector
product for the logits, then the weighted sum after the softmax); the Pallas kernel reads ``x`` once, keeping a
running maximum, denominator and (block_s, D) accumulator per query while it walks the views (the online
softmax of flash attention).

Contract (every implementation):
- ``x`` (B, V, S, D) float; ``w`` (D,); ``bias`` () or (1,); ``view_mask`` (B, V) bool.
- Logits, softmax and the sum are computed in float32 from ``x`` and ``w`` as given (cast them to the compute
  dtype first); the output is (B, S, D) in ``x.dtype``.
- Masked views get the logit -1e30, as in the original's masked softmax: if every view of a batch element is
  masked, the weights are uniform over the V views.

Implementations: ``"pallas"`` (GPU, Triton backend), ``"pallas_interpret"`` (the same kernel under the Pallas
interpreter, for CPU tests), ``"xla"`` (:func:`view_softmax_pool_reference`). ``None`` picks ``"pallas"`` on GPU
and ``"xla"`` elsewhere (TPU included: Mosaic would need D padded to a lane multiple; XLA's two fused passes are
the portable path). The gradient (``jax.custom_vjp``) is the reference's VJP, recomputed from the saved inputs:
the kernel only replaces the forward pass.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

IMPLEMENTATIONS = ("pallas", "pallas_interpret", "xla")
MASKED_LOGIT = -1e30
BLOCK_S = 8  # queries per program
NUM_WARPS = 4
UNROLL_VIEWS = True


def view_softmax_pool_reference(x, w, bias, view_mask):
    """Pure jnp: (B, V, S, D), (D,), (), (B, V) -> (B, S, D) in x.dtype."""
    x32 = x.astype(jnp.float32)
    logits = jnp.einsum("bvsd,d->bvs", x32, w.astype(jnp.float32)) + jnp.reshape(bias, ()).astype(jnp.float32)
    logits = jnp.where(view_mask[:, :, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=1)
    return jnp.einsum("bvs,bvsd->bsd", weights, x32).astype(x.dtype)


def _kernel(x_ref, w_ref, bias_ref, mask_ref, out_ref, *, views, length, dim, block_s, unroll):
    b = pl.program_id(1)
    s = pl.program_id(0) * block_s + jnp.arange(block_s, dtype=jnp.int32)
    s_in = s < length
    d = jnp.arange(1 << (dim - 1).bit_length(), dtype=jnp.int32)  # Triton blocks are powers of two
    d_in = d < dim
    tile_mask = s_in[:, None] & d_in[None, :]
    cols = jnp.broadcast_to(d[None, :], tile_mask.shape)
    w = plgpu.load(w_ref.at[d], mask=d_in, other=0.0).astype(jnp.float32)
    bias = bias_ref[0].astype(jnp.float32)

    def view_step(v, carry):
        m, denom, acc = carry
        rows = jnp.broadcast_to(((b * views + v) * length + s)[:, None], tile_mask.shape)
        xv = plgpu.load(x_ref.at[rows, cols], mask=tile_mask, other=0.0).astype(jnp.float32)
        logit = jnp.sum(xv * w[None, :], axis=1) + bias
        logit = jnp.where(mask_ref[b * views + v] != 0, logit, MASKED_LOGIT)
        m_new = jnp.maximum(m, logit)
        scale = jnp.exp(m - m_new)
        p = jnp.exp(logit - m_new)
        return m_new, denom * scale + p, acc * scale[:, None] + p[:, None] * xv

    carry = (jnp.full((block_s,), -jnp.inf, jnp.float32), jnp.zeros((block_s,), jnp.float32),
             jnp.zeros(tile_mask.shape, jnp.float32))
    if unroll:
        for v in range(views):
            carry = view_step(v, carry)
    else:
        carry = lax.fori_loop(0, views, view_step, carry)
    _, denom, acc = carry
    out_rows = jnp.broadcast_to((b * length + s)[:, None], tile_mask.shape)
    plgpu.store(out_ref.at[out_rows, cols], (acc / denom[:, None]).astype(out_ref.dtype), mask=tile_mask)


def view_softmax_pool_pallas(x, w, bias, view_mask, *, interpret: bool = False, block_s: int | None = None,
                             num_warps: int | None = None, unroll: bool | None = None):
    """The Pallas (Triton) forward; same contract as the reference. No gradient of its own.
    block_s queries per program (all D channels), num_warps, unroll: the view loop unrolled (else a loop)."""
    b, v, s, d = x.shape
    block_s = block_s or BLOCK_S
    unroll = UNROLL_VIEWS if unroll is None else unroll
    kernel = functools.partial(_kernel, views=v, length=s, dim=d, block_s=block_s, unroll=unroll)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * s, d), x.dtype),
        grid=(pl.cdiv(s, block_s), b),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps or NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="view_softmax_pool",
    )(x.reshape(b * v * s, d), w.astype(jnp.float32), jnp.reshape(bias, (1,)).astype(jnp.float32),
      view_mask.reshape(b * v).astype(jnp.int32))
    return out.reshape(b, s, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pooled(x, w, bias, view_mask, interpret):
    return view_softmax_pool_pallas(x, w, bias, view_mask, interpret=interpret)


def _pooled_fwd(x, w, bias, view_mask, interpret):
    return _pooled(x, w, bias, view_mask, interpret), (x, w, bias, view_mask)


def _pooled_bwd(interpret, residuals, g):
    x, w, bias, view_mask = residuals
    _, vjp = jax.vjp(lambda x, w, bias: view_softmax_pool_reference(x, w, bias, view_mask), x, w, bias)
    return (*vjp(g), None)


_pooled.defvjp(_pooled_fwd, _pooled_bwd)


def view_softmax_pool(x, w, bias, view_mask, *, implementation: str | None = None):
    """Σ_v softmax_v(x_v · w + bias) x_v over the unmasked views; see the module docstring for the contract."""
    if x.ndim != 4 or w.shape != (x.shape[-1],) or view_mask.shape != x.shape[:2] or jnp.size(bias) != 1:
        raise ValueError(f"view_softmax_pool: expected x (B, V, S, D), w (D,), bias (), view_mask (B, V); got "
                         f"{x.shape}, {w.shape}, {jnp.shape(bias)}, {view_mask.shape}")
    if implementation is None:
        implementation = "pallas" if jax.default_backend() == "gpu" else "xla"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None, got {implementation!r}")
    if implementation == "xla":
        return view_softmax_pool_reference(x, w, bias, view_mask)
    return _pooled(x, w, jnp.reshape(bias, ()), view_mask.astype(bool), implementation == "pallas_interpret")
