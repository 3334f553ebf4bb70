"""Block sizes of the TPU (Pallas Mosaic) kernels, as frozen dataclasses (one per op), passed as ``config=``; the
ops take them as the ``tpu`` field of their ``DeformableConfig`` / ``RasterizeConfig``.

Defaults are chosen from the VMEM budget (docs/tpu.md), not measured: no TPU has run these kernels yet.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DeformableTpuConfig:
    """block_q: queries per program (sublanes of the weight matrix; a multiple of 128, it is also the lane
    width of the transposed cotangent block). chunk: value-map pixels per DMA'd chunk (lanes; a multiple of 128).
    """

    block_q: int = 128
    chunk: int = 512

    def __post_init__(self):
        if self.block_q % 128 or self.chunk % 128 or self.block_q <= 0 or self.chunk <= 0:
            raise ValueError(f"block_q and chunk must be positive multiples of 128, got {self}")


@dataclasses.dataclass(frozen=True)
class RasterizeTpuConfig:
    """chunk: list entries per step of a tile's loop (the lanes of the (256, chunk) per-pixel blocks and the
    size of the triangular matrix whose matmul is the prefix sum along the chunk; a multiple of 128)."""

    chunk: int = 128

    def __post_init__(self):
        if self.chunk % 128 or self.chunk <= 0:
            raise ValueError(f"chunk must be a positive multiple of 128, got {self}")

