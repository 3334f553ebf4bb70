"""Where the inference time goes: device-kernel time per stage, grouped by kind of kernel.

    python tools/profile_inference.py [--views 6 21] [--size 448] [--dtype bfloat16] [--anchors proposal|surface]
                                      [--set KEY=VALUE ...] [--repeats 5] [--top 12] [--out DIR]

Each stage of ``geolrm_jax.benchmark.build_stages`` is compiled, warmed up, then run ``--repeats`` times
under ``jax.profiler`` (with ``create_perfetto_trace=True``). The Perfetto JSON of each trace is read back
and every device event (a kernel or a copy on a ``/device:GPU`` process) is summed by name; the table gives
milliseconds per run for each kind of kernel and the ``--top`` kernels of each stage. Wall time (median,
``block_until_ready``) is printed beside the summed kernel time: the gap is launch overhead and idle time.

Kinds are read off kernel names: cuDNN attention, matrix products (cuBLAS / cuBLASLt / CUTLASS), the
deformable-sampling Pallas kernels, sorts, XLA fusions, gathers/scatters and copies. Runs on CPU too (the
table is then empty: the CPU backend emits no device events), which the tests use as a smoke test.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile
import time

KINDS = (  # (kind, substrings of the lower-cased kernel name); first match wins
    ("attention (cuDNN)", ("cudnn", "flash", "fmha", "sdpa")),
    ("deformable (Pallas)", ("deformable", "_forward_kernel", "_backward_kernel")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "wgmma")),
    ("sort", ("sort", "radix", "cub::")),
    ("gather/scatter", ("gather", "scatter", "dynamic_slice", "dynamic-update")),
    ("copy/transpose", ("copy", "memcpy", "memset", "transpose")),
    ("reduction", ("reduce", "reduction")),
    ("fusion (XLA)", ("fusion", "loop_", "input_", "wrapped_")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def device_events(trace_dir: str, with_start: bool = False):
    """(name, duration in µs) of every complete event on a device process of the Perfetto trace in trace_dir;
    with_start: (name, start µs, duration µs), sorted by start."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(sorted(paths)[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    device_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                   and "/device:" in str(e.get("args", {}).get("name", ""))}
    picked = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids]
    if with_start:
        return sorted((e["name"], float(e["ts"]), float(e.get("dur", 0.0))) for e in picked if "ts" in e)
    return [(e["name"], float(e.get("dur", 0.0))) for e in picked]


def idle_gaps(timed_events, min_gap_us: float = 5.0, max_gap_us: float = 5000.0):
    """Device idle time between kernels, from (name, start µs, duration µs) events: {(kernel before, kernel
    after): (total µs, count)} over gaps in [min_gap_us, max_gap_us] (longer gaps are between traced runs).
    Overlapping kernels (several streams) count as busy."""
    gaps = collections.defaultdict(lambda: [0.0, 0])
    busy_until, last = None, None
    for name, start, dur in sorted(timed_events, key=lambda e: e[1]):
        if busy_until is not None and min_gap_us <= start - busy_until <= max_gap_us:
            gaps[(last, name)][0] += start - busy_until
            gaps[(last, name)][1] += 1
        if busy_until is None or start + dur >= busy_until:
            busy_until, last = start + dur, name
    return {k: tuple(v) for k, v in gaps.items()}


def run_spans(timed_events, runs: int):
    """Device busy spans (first kernel start to last kernel end, µs) of `runs` traced back-to-back runs, from
    (name, start µs, duration µs) events: the runs-1 longest idle gaps separate the runs. Wall time minus the
    span is host time that no kernel overlaps (dispatch before the first kernel, completion after the last)."""
    intervals, end = [], None
    for _, start, dur in sorted(timed_events, key=lambda e: e[1]):
        if end is None or start > end:
            intervals.append([start, start + dur])
        else:
            intervals[-1][1] = max(intervals[-1][1], start + dur)
        end = intervals[-1][1]
    if not intervals or runs < 1:
        return []
    gaps = sorted(range(1, len(intervals)), key=lambda i: intervals[i][0] - intervals[i - 1][1])
    cuts = sorted(gaps[len(gaps) - (runs - 1):]) if runs > 1 else []
    bounds = [0, *cuts, len(intervals)]
    return [intervals[b - 1][1] - intervals[a][0] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def profile_stage(fn, args, repeats: int, hlo_path: str | None = None, compiler_options: dict | None = None,
                  label: str | None = None, with_stats: bool = False):
    """Compile fn, warm up, time `repeats` runs, then trace `repeats` more: (output, median wall s,
    {kernel name: (µs per run, launches per run)}). hlo_path: write the optimized HLO there (kernel names
    in the trace are its fusion names). compiler_options: XLA options for this compilation. with_stats: also
    return {"dispatch_s": median time until the call returns, "idle_s": device idle between kernels per run,
    "arguments": number of argument arrays, "span_s": median device busy span of a run}."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile(compiler_options=compiler_options or None)
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(compiled.as_text())
    out = jax.block_until_ready(compiled(*args))
    times, dispatch = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pending = compiled(*args)
        dispatch.append(time.perf_counter() - t0)
        jax.block_until_ready(pending)
        times.append(time.perf_counter() - t0)
    leaves = len(jax.tree.leaves(args))
    label = label or getattr(fn, "__name__", "fn")
    print(f"  [{label}] {leaves} argument arrays, dispatch (call returns) "
          f"{1e3 * statistics.median(dispatch):.2f} ms, wall {1e3 * statistics.median(times):.2f} ms", flush=True)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(repeats):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        events = device_events(trace_dir)
        timed = device_events(trace_dir, with_start=True)
        gaps = idle_gaps(timed)
        spans = run_spans(timed, repeats)
    idle = sum(us for us, _ in gaps.values()) / repeats
    print(f"  [{label}] device idle between kernels {idle / 1e3:.2f} ms/run; largest:",
          flush=True)
    for (before, after), (us, n) in sorted(gaps.items(), key=lambda kv: -kv[1][0])[:6]:
        print(f"      {us / repeats / 1e3:6.3f} ms in {n / repeats:4.0f} gaps  {before[:50]} -> {after[:50]}",
              flush=True)
    per_name = collections.defaultdict(lambda: [0.0, 0])
    for name, dur in events:
        per_name[name][0] += dur / repeats
        per_name[name][1] += 1
    kernels = {k: (us, n / repeats) for k, (us, n) in per_name.items()}
    if with_stats:
        return out, statistics.median(times), kernels, {"dispatch_s": statistics.median(dispatch),
                                                         "idle_s": idle / 1e6, "arguments": leaves,
                                                         "span_s": statistics.median(spans) / 1e6 if spans else None}
    return out, statistics.median(times), kernels


def profile(config, variables, views: int, size: int, repeats: int, anchors: str = "proposal",
            hlo_dir: str | None = None):
    """{stage: (wall s, {kernel: (µs/run, launches/run)})} for the four stages of one configuration and for
    the whole model as one program ("end_to_end")."""
    from geolrm_jax import benchmark

    stages = benchmark.build_stages(config, size)
    hlo = lambda stage: hlo_dir and os.path.join(hlo_dir, f"hlo_{views}v_{stage}.txt")
    images, c2ws, Ks, view_mask = benchmark.example_inputs(views, size)
    result = {}
    (feats_p, feats_r), wall, k = profile_stage(stages.encoder, (variables, images, c2ws, Ks), repeats, hlo("encoder"))
    result["encoder"] = (wall, k)
    (anc, mask), wall, k = profile_stage(stages.proposal, (variables, feats_p, c2ws, Ks, view_mask), repeats,
                                         hlo("proposal"))
    result["proposal"] = (wall, k)
    if anchors == "surface":
        anc, mask = benchmark.surface_anchors(config.proposal, mask.shape[-1])
    latents, wall, k = profile_stage(stages.reconstruction, (variables, feats_r, c2ws, Ks, view_mask, anc, mask),
                                     repeats, hlo("reconstruction"))
    result["reconstruction"] = (wall, k)
    _, wall, k = profile_stage(stages.decoding, (variables, latents, anc, mask), repeats, hlo("decoding"))
    result["decoding"] = (wall, k)
    from geolrm_jax.model.geolrm import GeoLRM

    _, wall, k = profile_stage(GeoLRM(config).apply, (variables, images, c2ws, Ks, view_mask), repeats,
                               hlo("end_to_end"))
    result["end_to_end"] = (wall, k)  # one program, the proposal's own anchors
    return result


def format_profile(result, top: int) -> str:
    lines = []
    for stage, (wall, kernels) in result.items():
        total_us = sum(us for us, _ in kernels.values())
        lines.append(f"== {stage}: wall {1e3 * wall:.2f} ms, device kernels {total_us / 1e3:.2f} ms "
                     f"({sum(n for _, n in kernels.values()):.0f} launches/run)")
        by_kind = collections.defaultdict(float)
        for name, (us, _) in kernels.items():
            by_kind[kernel_kind(name)] += us
        for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            lines.append(f"   {kind:<22} {us / 1e3:>8.2f} ms  {100 * us / max(total_us, 1e-9):>5.1f}%")
        lines.append(f"   top {top} kernels (ms/run, launches/run, kind):")
        for name, (us, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"     {us / 1e3:>8.3f} {n:>6.0f}  {kernel_kind(name):<20} {name[:90]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", default="official")
    p.add_argument("--views", type=int, nargs="+", default=[6, 21])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--anchors", default="proposal", choices=("proposal", "surface"),
                   help="reconstruction anchors: the proposal stage's (random weights: scattered voxels) or "
                        "a sphere's surface voxels (benchmark.surface_anchors)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", help="write the per-kernel numbers as JSON here")
    p.add_argument("--dump-hlo", action="store_true", help="also write each stage's optimized HLO into --out")
    args = p.parse_args(argv)
    if args.dump_hlo and not args.out:
        p.error("--dump-hlo needs --out")
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    import jax

    from geolrm_jax import benchmark
    from geolrm_jax.model import convert

    config = benchmark.apply_overrides(convert.config_from_arg(args.model_config), args.set)
    config.dtype = args.dtype
    variables = benchmark._variables(args.model_config, tuple(args.set), 0, args.dtype)
    print(f"device: {jax.local_devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{args.size} px, {args.dtype}, anchors {args.anchors}, {' '.join(args.set)}", flush=True)
    everything = {}
    for views in args.views:
        result = profile(config, variables, views, args.size, args.repeats, args.anchors,
                         args.out if args.dump_hlo else None)
        everything[str(views)] = {s: {"wall_s": w, "kernels_us": {n: us for n, (us, _) in k.items()}}
                                  for s, (w, k) in result.items()}
        stage_sum = sum(w for name, (w, _) in result.items() if name != "end_to_end")
        print(f"\n##### {views} views: sum of stage walls {1e3 * stage_sum:.1f} ms, end to end "
              f"{1e3 * result['end_to_end'][0]:.1f} ms", flush=True)
        print(format_profile(result, args.top), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"profile_{args.dtype}_{args.anchors}.json"), "w") as f:
            json.dump(everything, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
