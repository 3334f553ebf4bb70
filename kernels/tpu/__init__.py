"""TPU (Pallas Mosaic) kernels: deformable sampling (forward, backward) and the splatter's rasterizer (forward,
backward). Selected by ``implementation="pallas_tpu"`` (default on TPU backends) or "pallas_tpu_interpret"
(TPU interpret mode, any backend: tests). Design and VMEM budgets: docs/tpu.md."""
