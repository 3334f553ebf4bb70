#!/usr/bin/env bash
# Before/after GPU check of a restructuring that must not change speed: the deformable-sampling, splatter and
# end-to-end inference benchmarks of two checkouts, interleaved in one GPU session, and a summary of their ratios.
#
#   bash tools/gpu_restructure_check.sh BEFORE_DIR [AFTER_DIR]
#
# BEFORE_DIR / AFTER_DIR (default: the current directory): source trees of the two versions, e.g. prepared on the
# host with `mkdir -p .before && git archive kernel-variants-2026-12 | tar -x -C .before` (an untracked, not
# ignored folder travels with the working tree). Each tree runs its own deformable and splat benchmarks
# (tools/bench/{deformable,splat}.py, or tools/bench_{deformable,splat}.py in older trees) and geolrm_jax.benchmark
# with the same arguments (arguments both versions accept), with
# PYTHONPATH set to that tree and `geolrm_kernels` linked to its kernels/. Results: $OUT/{before,after}/*.json,
# logs beside them, and $OUT/summary.json (after / before per measurement; > 1 is a slowdown; see
# tools/bench/compare_runs.py, which also merges runs split over several calls). REPS (default 5) sets the
# repeats; STEPS (default "deformable splat e2e") which benchmarks run, to split the check over calls of limited
# length. About 5 minutes per tree on one H100, compiles included.
set -u
BEFORE=$(cd "${1:?usage: gpu_restructure_check.sh BEFORE_DIR [AFTER_DIR]}" && pwd)
AFTER=$(cd "${2:-.}" && pwd)
OUT=${OUT:-/tmp/gpu-restructure-check}
REPS=${REPS:-5}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT/before" "$OUT/after"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/device.txt"

run() {  # run LABEL TREE NAME COMMAND...: COMMAND in TREE with that tree's packages, log to $OUT/LABEL/NAME.log
  local label=$1 tree=$2 name=$3
  shift 3
  mkdir -p "/tmp/restructure-$label"
  ln -sfn "$tree/kernels" "/tmp/restructure-$label/geolrm_kernels"
  local t0=$(date +%s)
  (cd "$tree" && PYTHONPATH="$tree:/tmp/restructure-$label" timeout "${STEP_TIMEOUT:-420}" "$@") \
    >"$OUT/$label/$name.log" 2>&1
  echo "$label $name: rc=$? in $(($(date +%s) - t0)) s"
}

bench() {  # bench TREE NAME: the tree's benchmark script NAME (deformable, splat), in either layout
  if [ -f "$1/tools/bench/$2.py" ]; then echo "tools/bench/$2.py"; else echo "tools/bench_$2.py"; fi
}

STEPS=${STEPS:-deformable splat e2e}
step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step deformable && for label in before after; do
  tree=$BEFORE; [ "$label" = after ] && tree=$AFTER
  run "$label" "$tree" deformable python3 "$(bench "$tree" deformable)" --rows 21:560px:16384,6:560px:8192 \
    --points sv3d --no-torch --reps "$REPS" --out "$OUT/$label"
done
step splat && for label in before after; do
  tree=$BEFORE; [ "$label" = after ] && tree=$AFTER
  run "$label" "$tree" splat python3 "$(bench "$tree" splat)" --sizes 524288 --settings 8x448 --implementations pallas \
    --repeats "$REPS" --json "$OUT/$label/bench_splat.json"
done
step e2e && for label in before after; do
  tree=$BEFORE; [ "$label" = after ] && tree=$AFTER
  run "$label" "$tree" e2e python3 -m geolrm_jax.benchmark --views 6 21 --sizes 448 --dtypes bfloat16 \
    --repeats "$REPS" --isolate --set attention_over_heads=False --out "$OUT/$label/bench_e2e.json"
done

python3 "$(dirname "$0")/bench/compare_runs.py" "$OUT"
