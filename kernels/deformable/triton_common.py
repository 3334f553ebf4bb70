"""Layout and helpers shared by the deformable-sampling Pallas (Triton) kernels, forward and backward.

Layout seen by the kernels (free reshapes of the contract's arrays, no copies of the value map):

- value (and d_value) as (B*V*L, H*C): row = (b*V + v)*L + level start + y*w_l + x, columns h*C .. h*C + C;
- out / its cotangent as (B*V*Q, H*C);
- reference points, offsets, attention weights and the (B, V, Q) mask flattened to 1-D fp32 / int32;
- the query order (B*Q,) int32: a program's block_q queries are consecutive in it.

A head's C channels are handled as lane chunks (:func:`channel_chunks`), each with its own loads, accumulators,
atomics and matmuls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from geolrm_kernels.deformable.reference import MASKED_LOCATION
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def dims(value, offsets):
    """(V, Q, L, H, C, NL, P): the static sizes the kernels are specialised on."""
    _, v, length, heads, c = value.shape
    return (v, offsets.shape[1], length, heads, c, offsets.shape[3], offsets.shape[4])


def flat_inputs(value, reference_points, offsets, attention_weights, mask):
    b, v, length, heads, c = value.shape
    return (value.reshape(b * v * length, heads * c),
            reference_points.astype(jnp.float32).reshape(-1),
            offsets.astype(jnp.float32).reshape(-1),
            attention_weights.astype(jnp.float32).reshape(-1),
            mask.astype(jnp.int32).reshape(-1))


def program_queries(order_ref, b, q_count, block_q, block=None):
    """(store index, in range, clipped query index) of this program's block_q slots of the query order
    (block: the query block, default pl.program_id(1)).

    Slots past Q keep their unclipped index for (masked) stores, as without an order."""
    block = pl.program_id(1) if block is None else block
    slot = block * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_in = slot < q_count
    qc = order_ref[b * q_count + jnp.minimum(slot, q_count - 1)]
    return jnp.where(q_in, qc, slot), q_in, qc


def point(off_ref, attn_ref, point_index, valid, ref_u, ref_v):
    """Attention weight and normalized location of one sample point; masked queries go off-image."""
    a = jnp.where(valid, attn_ref[point_index], 0.0)
    u = jnp.where(valid, ref_u + off_ref[point_index * 2], MASKED_LOCATION)
    v = jnp.where(valid, ref_v + off_ref[point_index * 2 + 1], MASKED_LOCATION)
    return a, u, v


def fused_multiply_add(a, b, c, *, interpret=False):
    """a * b + c (fp32, same shapes) with one rounding: PTX ``fma.rn.f32`` by inline assembly, since the Triton
    compile of JAX's Pallas calls does not contract a multiply and an add (Nsight Compute on an H100 counted
    0 fused FP32 instructions in these kernels). The interpreter computes a * b + c."""
    if interpret:
        return a * b + c
    [out] = plgpu.elementwise_inline_asm("fma.rn.f32 $0, $1, $2, $3;", args=[a, b, c], constraints="=f,f,f,f",
                                         pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(c.shape, jnp.float32)])
    return out


def point_loop(points: int, step, carry):
    """carry = step(point, carry) for point in range(points): a ``fori_loop`` (one point per iteration: small
    code, short compiles; unrolling measured slower), inlined for a single point."""
    if points > 1:
        return lax.fori_loop(0, points, step, carry)
    for p in range(points):
        carry = step(p, carry)
    return carry


def channel_chunks(c: int, chunk: int):
    """Static lane chunks covering C channels: tuple of (first channel, width, masked).

    ``chunk``: lanes per chunk, a power of two; 0 gives one block of the next power of two at least 16 (C = 48
    pads to 64 lanes). Chunks of 16 tile C = 48 exactly, so no lane is padding, and with 16 queries and 2 warps
    (or 32 and 4) Triton gives each thread 4 channels of one query per chunk: a query's corners, weights and
    addresses are computed by 4 threads instead of 16."""
    if not chunk:
        width = max(16, next_pow2(c))
        return ((0, width, width > c),)
    return tuple((start, chunk, start + chunk > c) for start in range(0, c, chunk))


def chunk_lanes(h, c, chunks, block_q):
    """Per chunk: (cols (block_q, width) int32 of head h, lane mask (width,) bool or None when all lanes are
    channels). Unclipped columns keep the loads contiguous and vectorizable; masked lanes are never read."""
    lanes = []
    for start, width, masked in chunks:
        ch = start + jnp.arange(width, dtype=jnp.int32)
        lanes.append((jnp.broadcast_to((h * c + ch)[None, :], (block_q, width)), ch < c if masked else None))
    return lanes


def lane_mask(row_mask, lane, shape):
    """(block_q, width) mask: row_mask (block_q,) and the chunk's lane mask (width,) or None."""
    if lane is None:
        return jnp.broadcast_to(row_mask[:, None], shape)
    return row_mask[:, None] & lane[None, :]
