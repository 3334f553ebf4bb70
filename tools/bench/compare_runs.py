"""After / before ratios of tools/gpu_restructure_check.sh's runs: reads OUT/{before,after}/bench_deformable.json,
bench_splat.json and bench_e2e.json from one or more run folders (the first holding a file wins), prints one line
per measurement and writes OUT/summary.json (into the first folder). A ratio above 1 is a slowdown.

    python tools/bench/compare_runs.py OUT [OUT2 ...]
"""
import json
import os
import sys

outs = sys.argv[1:] or [os.environ.get("OUT", ".")]


def load(label, name):
    """The first of the run folders holding LABEL/NAME (a check may be split over several device calls)."""
    for out in outs:
        path = os.path.join(out, label, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def measurements(label):
    found = {}
    deformable = load(label, "bench_deformable.json")
    for key, row in ((deformable or {}).get("results", {}).get("pallas", {})).items():
        for metric in ("fwd_ms", "fwdbwd_ms"):
            if metric in row:
                found[f"deformable {key} {metric}"] = row[metric]
    for row in load(label, "bench_splat.json") or []:
        for metric in ("forward_ms", "fwd_bwd_ms"):
            if metric in row:
                found[f"splat {row['gaussians']} {row['views']}x{row['size']} {metric}"] = row[metric]
    for row in load(label, "bench_e2e.json") or []:
        for metric in ("end_to_end_s", "total_s"):
            if metric in row:
                found[f"e2e {row['views']} views {row['size']} px {row['dtype']} {metric}"] = 1e3 * row[metric]
    return found


before, after = measurements("before"), measurements("after")
summary = {key: {"before_ms": before[key], "after_ms": after.get(key),
                 "after/before": after[key] / before[key] if key in after and before[key] else None}
           for key in before}
with open(os.path.join(outs[0], "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
for key, row in summary.items():
    ratio = "-" if row["after/before"] is None else f"{row['after/before']:.3f}"
    print(f"{key:55s} {row['before_ms']:9.2f} -> {row['after_ms'] or float('nan'):9.2f} ms  ({ratio})")
missing = sorted(set(after) ^ set(before))
if missing:
    print("only in one run:", missing)
