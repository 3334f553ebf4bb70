"""Tuning parameters of the deformable-sampling Pallas kernels: a frozen (hashable) dataclass passed to the op as
``config=``; it changes only the speed, never the result.

The defaults are the fastest measured at the model's shapes (V = 21 views, 140^2 + 80^2 levels, S = 16384
queries, H = 16 heads of C = 48 channels, model-like points; H100 and H200, ``tools/bench/deformable.py``);
docs/kernels.md gives the numbers.
"""
from __future__ import annotations

import dataclasses

from geolrm_kernels.tpu.config import DeformableTpuConfig


@dataclasses.dataclass(frozen=True)
class DeformableConfig:
    """Block sizes, warps and lane layout of the forward, the d_value and the point-gradient kernels.

    forward_block_q / forward_num_warps: queries per program and warps of the forward kernel.
    forward_channel_chunk: lanes per channel chunk of a head in the forward (0: one block of the next power of
        two, e.g. 64 lanes for C = 48; 16: chunks of 16 lanes), see ``triton_common.channel_chunks``.
    value_grad_block_q / value_grad_num_warps: queries per program and warps of the d_value kernel (at least 16:
        the K of its window matmul).
    window: side of the pixel window the d_value kernel accumulates per (program, view, level) (power of two).
    point_grads_block_q / point_grads_num_warps: the same for the point-gradient kernel (d_offsets,
        d_attention_weights, d_reference_points).
    backward_channel_chunk: lanes per channel chunk of both backward kernels.
    sort_queries: programs take their queries in ``query_order.spatial_query_order`` (else in index order).
    relaxed_atomics: d_value atomics with relaxed memory ordering where available (``geolrm_kernels.atomics``);
        False: ``plgpu.atomic_add`` (acquire-release).
    tpu: block sizes of the TPU (Pallas Mosaic) kernels, ``implementation="pallas_tpu"`` (docs/tpu.md).
    """

    forward_block_q: int = 16
    forward_num_warps: int = 4
    forward_channel_chunk: int = 0
    value_grad_block_q: int = 16
    value_grad_num_warps: int = 2
    window: int = 8
    point_grads_block_q: int = 16
    point_grads_num_warps: int = 4
    backward_channel_chunk: int = 16
    sort_queries: bool = True
    relaxed_atomics: bool = True
    tpu: DeformableTpuConfig = DeformableTpuConfig()


DEFAULT_CONFIG = DeformableConfig()
