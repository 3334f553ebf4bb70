#!/usr/bin/env bash
# End-to-end inference benchmark on a GPU: the speed targets (448 px, 8k anchors) at 6 and 21 views.
#   bf16 rows use ordinary attention over anchors (cuDNN flash attention), which is the original's bf16 path;
#   the fp32 row uses the original's float32 path (attention over heads, what the released config runs).
# Usage: bash tools/gpu_inference_bench.sh [OUT_DIR]      (needs jax[cuda] and the repo installed)
set -euo pipefail
out=${1:-bench_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python -c "import jax; print(jax.__version__, jax.devices())"
python -m geolrm_jax.benchmark --views 6 21 --sizes 448 --dtypes bfloat16 --repeats 10 --isolate \
    --set attention_over_heads=False --out "$out/bench_bf16.json" | tee "$out/bench_bf16.txt"
python -m geolrm_jax.benchmark --views 6 --sizes 448 --dtypes float32 --repeats 5 --isolate \
    --out "$out/bench_fp32.json" | tee "$out/bench_fp32.txt"
