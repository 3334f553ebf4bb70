"""Tuning parameters of the rasterizer's Pallas kernels: a frozen (hashable) dataclass passed as ``config=``; it
changes only the speed, never the result.

Defaults: the fastest swept on an H100 (512k Gaussians, 8 x 448^2 cameras, ``tools/bench/splat.py``): forward
chunks of 8 entries with 4 warps, backward chunks of 16 with 8 warps (forward chunks of 16: 0.5-1 ms slower
fwd+bwd in three runs); see docs/kernels.md.
"""
from __future__ import annotations

import dataclasses

from geolrm_kernels.tpu.config import RasterizeTpuConfig


@dataclasses.dataclass(frozen=True)
class RasterizeConfig:
    """chunk / num_warps: list entries per step and warps per program (one 16x16 tile) of the forward;
    backward_chunk / backward_num_warps: the same for the backward. tpu: the block size of the TPU (Pallas
    Mosaic) kernels, ``implementation="pallas_tpu"`` (docs/tpu.md)."""

    chunk: int = 8
    num_warps: int = 4
    backward_chunk: int = 16
    backward_num_warps: int = 8
    tpu: RasterizeTpuConfig = RasterizeTpuConfig()


DEFAULT_CONFIG = RasterizeConfig()
