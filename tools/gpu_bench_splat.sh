#!/usr/bin/env bash
# GPU run of the splatter's checks and benchmark against gsplat (device recipe; see docs/splatter.md).
#
#   bash tools/gpu_bench_splat.sh [tools/bench/splat.py arguments...]
#
# Needs: .whl-gsplat/gsplat-1.5.3-py3-none-any.whl (pip download gsplat==1.5.3), and either a prebuilt
# .splat-carry/gsplat/gsplat_cuda.so (or its split parts gsplat_cuda.so.part-*) or nvcc + ninja to compile gsplat
# (TORCH_CUDA_ARCH_LIST=9.0, a few minutes; bounded by COMPILE_TIMEOUT). A copy of the splat_small fixtures in
# .splat-carry/splat_small is checked with the Pallas kernels first (CHECK=0 skips it). Results go to $OUT (or
# /tmp/gpu-bench-splat): compile.log, check.log, bench.json, bench.log, ncu.txt (NCU=1) and, after a compile, the .so in
# 15 MiB parts.
set -u
OUT=${OUT:-/tmp/gpu-bench-splat}
mkdir -p "$OUT" /tmp/k /tmp/site
export PYTHONPATH=$PWD:/tmp/k:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
ln -sfn "$PWD/kernels" /tmp/k/geolrm_kernels
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl-gsplat/*.whl \
  || echo "gsplat wheel not installed: the benchmark will skip gsplat"
# The fixture check (correctness only) runs in the background, overlapping a gsplat compile.
if [ "${CHECK:-1}" = 1 ]; then
  (python3 tools/check_splat.py --fixture .splat-carry/splat_small --implementation pallas >"$OUT/check.log" 2>&1
   echo "rc=$?" >>"$OUT/check.log") &
fi
SO_DIR=$PWD/.splat-carry/gsplat
if [ ! -f "$SO_DIR/gsplat_cuda.so" ] && ls "$SO_DIR"/gsplat_cuda.so.part-* >/dev/null 2>&1; then
  mkdir -p /tmp/gso && cat "$SO_DIR"/gsplat_cuda.so.part-* > /tmp/gso/gsplat_cuda.so && SO_DIR=/tmp/gso
fi
if [ ! -f "$SO_DIR/gsplat_cuda.so" ]; then
  export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 TORCH_EXTENSIONS_DIR=/tmp/gsb
  t0=$(date +%s)
  timeout "${COMPILE_TIMEOUT:-330}" python3 -c "from gsplat.cuda._backend import _C; assert _C is not None" \
    >"$OUT/compile.log" 2>&1
  echo "gsplat compile: rc=$? after $(($(date +%s) - t0)) s"
  tail -3 "$OUT/compile.log"
  SO_DIR=/tmp/gsb/gsplat_cuda
  if [ -f "$SO_DIR/gsplat_cuda.so" ]; then
    ls -la "$SO_DIR/gsplat_cuda.so"
    split -b 15M "$SO_DIR/gsplat_cuda.so" "$OUT/gsplat_cuda.so.part-"
    rm -f "$OUT/compile.log"  # kept only when the compile fails (the device returns at most 8 files)
  fi
fi
wait
if [ "${CHECK:-1}" = 1 ]; then echo "check_splat (pallas):"; tail -3 "$OUT/check.log"; fi
GSPLAT_ARG=()
[ -f "$SO_DIR/gsplat_cuda.so" ] && GSPLAT_ARG=(--gsplat-so "$SO_DIR")
python3 tools/bench/splat.py "${GSPLAT_ARG[@]}" --json "$OUT/bench.json" "$@" 2>&1 | grep -v "^W0000\|^I0000" | tee "$OUT/bench.log"
# NCU=1: an Nsight Compute profile of the two Pallas kernels (default switches, first size and setting) to
# $OUT/ncu.txt, bounded by NCU_TIMEOUT seconds.
if [ "${NCU:-0}" = 1 ]; then
  timeout "${NCU_TIMEOUT:-150}" ncu --kernel-name regex:'splat|rasterize' --launch-count 4 --section SpeedOfLight \
    --section LaunchStats --section Occupancy --section WarpStateStats --section InstructionStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    python3 tools/bench/splat.py --profile "$@" >"$OUT/ncu.txt" 2>&1
  echo "ncu: rc=$?"; grep -E "splat|rasterize|Registers Per|Achieved Occupancy|Duration|Local|Stall" "$OUT/ncu.txt" | head -40
fi
