#!/usr/bin/env bash
# Train the demo model (configs/demo.py) on the GPU machine, resuming from what earlier calls left.
#
#   S1_SECONDS=180 SECONDS_TOTAL=540 bash tools/gpu_train_demo.sh
#
# Workdirs live in runs/demo1 (stage 1) and runs/demo2 (stage 2), which persist on a warm machine between calls.
# On a fresh machine they are restored from .devcarry/demo_state.tar.part-* when present. Stage 1 trains until
# its step target or S1_SECONDS, stage 2 (initialized from stage 1) for the rest of SECONDS_TOTAL; each run is
# stopped with SIGTERM, which saves a checkpoint. Results in $OUT: the logs, the procedural-data benchmark, the
# TensorBoard scalars as JSON and a plot, the exported bf16 model (demo_model.tar) and, with STATE=1, the
# workdirs' latest checkpoints as demo_state.tar.part-* (15 MiB parts). On a fresh machine without them, stage 2
# continues from .devcarry/demo_model.tar (an earlier call's demo_model.tar; parameters only).
set -u
OUT=${OUT:-/tmp/demo-out}
mkdir -p "$OUT" /tmp/k /tmp/site runs
export PYTHONPATH=$PWD:/tmp/k:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
ln -sfn "$PWD/kernels" /tmp/k/geolrm_kernels
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
if [ ! -d runs/demo1 ] && ls .devcarry/demo_state.tar.part-* >/dev/null 2>&1; then
  cat .devcarry/demo_state.tar.part-* | tar -x -C runs && echo "restored runs/ from .devcarry"
fi
start=$(date +%s)
total=${SECONDS_TOTAL:-540}
if [ -f .gpu_seconds_cap ]; then  # an operator's cap for this call (the session's device time left), untracked
  cap=$(cat .gpu_seconds_cap)
  if [ "$total" -gt "$cap" ]; then
    total=$cap BENCH=0 S1_SECONDS=$(( ${S1_SECONDS:-0} < cap * 2 / 5 ? ${S1_SECONDS:-0} : cap * 2 / 5 ))
    echo "capped to $cap s (stage 1 $S1_SECONDS s, no data benchmark)"
  fi
fi
[ "${BENCH:-1}" = 1 ] && timeout 60 python3 tools/bench/procedural.py --batch-size 16 --batches 2 \
  | tee "$OUT/bench_procedural.json"
train() {  # config-argument seconds extra-args...
  local arg=$1 secs=$2 stage=${1%%,*}; shift 2
  [ "$secs" -gt 60 ] || return 0
  timeout -s TERM -k 60 "$secs" python3 -m geolrm_jax.train.main --config=configs/demo.py:$arg \
    --workdir=$PWD/runs/demo$stage "$@" >>"$OUT/train$stage.log" 2>&1
  echo "stage $stage exit $? after $(( $(date +%s) - start )) s"
  grep -E "loss|psnr|iou" "$OUT/train$stage.log" | grep -v absl | tail -3
}
if [ "${S1_SECONDS:-0}" -gt 0 ]; then
  train 1 "$S1_SECONDS" ${S1_ARGS:-}
fi
left=$(( total - ($(date +%s) - start) - ${RESERVE:-75} ))
if [ ! -d runs/demo2 ] && [ ! -d runs/demo1 ] && [ -f .devcarry/demo_model.tar ]; then
  # a fresh machine: continue stage 2 from the exported model an earlier call brought back
  tar -x -C /tmp -f .devcarry/demo_model.tar && echo "continuing from .devcarry/demo_model.tar"
  train 2,continue "$left" --config.init_from=/tmp/demo_model ${S2_ARGS:-}
else
  train 2 "$left" --config.init_from=$PWD/runs/demo1 ${S2_ARGS:-}
fi
python3 tools/export_scalars.py runs/demo1 runs/demo2 --out "$OUT/scalars.json" || true
python3 tools/plot_training.py "$OUT/scalars.json" --out "$OUT/curves.png" || true
if [ -d runs/demo2/checkpoints ]; then
  python3 tools/export_demo_model.py runs/demo2 --out /tmp/demo_model >"$OUT/export.log" 2>&1 \
    && tar -c -C /tmp demo_model > "$OUT/demo_model.tar" || true
fi
if [ "${STATE:-0}" = 1 ]; then  # the whole training state (large: only when $OUT has room for it)
  ( cd runs && tar -c --exclude='*.orbax-checkpoint-tmp*' demo1 demo2 ) | split -b 15M - "$OUT/demo_state.tar.part-"
fi
gzip -f "$OUT"/train*.log
ls -la "$OUT"
