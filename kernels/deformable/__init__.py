"""Multi-view multi-scale deformable sampling: the op (``api``), its pure-jnp reference (``reference``), the Pallas
Triton kernels (``forward_triton``, ``backward_triton``, ``triton_common``), the kernels' query order
(``query_order``) and tuning parameters (``config``). Contract: see ``api``."""
from geolrm_kernels.deformable.api import (
    DEFORMABLE_SAMPLE,
    GPU_DEFAULT_IMPLEMENTATION,
    IMPLEMENTATIONS,
    default_implementation,
    deformable_sample,
    deformable_sample_reference,
    kernel_query_order,
    validate_inputs,
)
from geolrm_kernels.deformable.config import DEFAULT_CONFIG, DeformableConfig

__all__ = ["DEFAULT_CONFIG", "DEFORMABLE_SAMPLE", "GPU_DEFAULT_IMPLEMENTATION", "IMPLEMENTATIONS", "DeformableConfig",
           "default_implementation", "deformable_sample", "deformable_sample_reference", "kernel_query_order",
           "validate_inputs"]
