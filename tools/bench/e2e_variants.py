"""The whole inference program (``GeoLRM.__call__``) compiled with different XLA options, side by side.

    python tools/bench/e2e_variants.py [--views 6 21] [--size 448] [--dtype bfloat16] [--set KEY=VALUE ...]
        [--variant NAME=OPTION:VALUE,OPTION:VALUE ...] [--repeats 10] [--rounds 2] [--out results.json]

Each variant is one set of XLA compiler options (``jax.jit(...).lower(...).compile(compiler_options=...)``),
e.g. ``--variant no_command_buffers=xla_gpu_enable_command_buffer:`` (an empty value disables XLA's CUDA-graph
command buffers). ``default`` (the library's ``geolrm_jax.model.geolrm.INFERENCE_COMPILER_OPTIONS``) and
``xla`` (XLA's own defaults, when those options are not empty) always come first. The variants are timed in
interleaved rounds (``--rounds`` × ``--repeats`` calls each, median of all), then each is traced once with
``tools/profile_inference.py``'s profiler.

The table gives per view count: wall ms (median), ratio to the first variant, dispatch ms (until the call
returns), device kernel ms, the device busy span of a run (first kernel start to last kernel end), idle time
inside it (span − kernels) and host-only time (wall − span: before the first kernel and after the last).
Same random weights and inputs as ``geolrm-jax bench`` (``geolrm_jax.benchmark``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import harness

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/, for profile_inference
import profile_inference  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME=OPT:VAL,OPT:VAL' -> (NAME, {OPT: VAL}); integer and true/false values are converted."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--variant {text!r}: expected NAME=OPTION:VALUE[,OPTION:VALUE...] (or NAME=)")
    options = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"--variant {text!r}: option {item!r} needs OPTION:VALUE")
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif value.lstrip("-").isdigit():
            value = int(value)
        options[key] = value
    return name, options


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", default="official")
    p.add_argument("--views", type=int, nargs="+", default=[6, 21])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OPTION:VALUE,...")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--dump-hlo", metavar="DIR", help="write each variant's optimized HLO here")
    p.add_argument("--trace-dir", help="also keep a Perfetto trace of the first variant's runs here")
    p.add_argument("--argument-overhead", action="store_true",
                   help="also time a trivial program that takes the model's variables (all argument arrays) "
                        "against one that takes only the images: the per-call cost of passing the weights")
    args = p.parse_args(argv)
    try:
        extra = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        p.error(str(e))

    import jax

    from geolrm_jax import benchmark
    from geolrm_jax.model import convert
    from geolrm_jax.model.geolrm import INFERENCE_COMPILER_OPTIONS, GeoLRM

    variants = [("default", dict(INFERENCE_COMPILER_OPTIONS))] + [("xla", {})] * bool(INFERENCE_COMPILER_OPTIONS)
    variants += [(n, o) for n, o in extra if n not in ("default", "xla")]
    config = benchmark.apply_overrides(convert.config_from_arg(args.model_config), args.set)
    config.dtype = args.dtype
    variables = benchmark._variables(args.model_config, tuple(args.set), 0, args.dtype)
    print(f"device: {jax.local_devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{args.size} px, {args.dtype}, {' '.join(args.set)}", flush=True)
    for name, options in variants:
        print(f"  variant {name}: {options}", flush=True)
    rows = []
    for views in args.views:
        inputs = (variables, *benchmark.example_inputs(views, args.size))
        fn = GeoLRM(config).apply
        compiled = {n: jax.jit(fn).lower(*inputs).compile(compiler_options=o or None) for n, o in variants}
        if args.dump_hlo:
            os.makedirs(args.dump_hlo, exist_ok=True)
            for n, c in compiled.items():
                with open(os.path.join(args.dump_hlo, f"hlo_{views}v_{n}.txt"), "w") as f:
                    f.write(c.as_text())
        times = {n: [] for n, _ in variants}
        for c in compiled.values():
            harness.call_times(lambda c=c, a=inputs: c(*a), 1, warmup=0)  # warm-up
        for _ in range(args.rounds):
            for n, c in compiled.items():
                times[n] += harness.call_times(lambda c=c, a=inputs: c(*a), args.repeats, warmup=0)
        for name, options in variants:
            _, _, kernels, stats = profile_inference.profile_stage(
                fn, inputs, args.repeats, compiler_options=options, label=f"{views}v {name}", with_stats=True)
            rows.append({"views": views, "size": args.size, "dtype": args.dtype, "variant": name,
                         "compiler_options": options, "wall_s": statistics.median(times[name]),
                         "device_kernels_s": sum(us for us, _ in kernels.values()) / 1e6,
                         "launches": sum(n for _, n in kernels.values()), **stats})
        if args.trace_dir:
            os.makedirs(args.trace_dir, exist_ok=True)
            jax.profiler.start_trace(os.path.join(args.trace_dir, f"{views}v"), create_perfetto_trace=True)
            harness.call_times(lambda c=compiled[variants[0][0]], a=inputs: c(*a), 3, warmup=0)
            jax.profiler.stop_trace()
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print(format_table(rows))
    if args.argument_overhead:
        print(argument_overhead(variables, benchmark.example_inputs(min(args.views), args.size)[0], args.repeats))
    return 0


def argument_overhead(variables, images, repeats: int) -> str:
    """Wall time per call of `images + 1` compiled with and without the model's variables as extra (unused)
    arguments: the host cost of passing every weight array on each call."""
    import jax

    with_vars = jax.jit(lambda v, x: x + 1).lower(variables, images).compile()
    without = jax.jit(lambda x: x + 1).lower(images).compile()
    n = len(jax.tree.leaves(variables))
    lines = [f"{'arguments':>10} | {'ms/call':>8}"]
    for label, call in ((str(n + 1), lambda: with_vars(variables, images)), ("1", lambda: without(images))):
        jax.block_until_ready(call())
        times = []
        for _ in range(5 * repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - t0)
        lines.append(f"{label:>10} | {1e3 * statistics.median(times):>8.3f}")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    def ms(x):
        return "n/a" if x is None else f"{1e3 * x:.2f}"

    head = (f"{'views':>5} {'variant':>24} | {'wall ms':>8} {'ratio':>6} | {'dispatch':>8} {'kernels':>8} "
            f"{'span':>7} {'in-run idle':>11} {'host-only':>9} {'launches':>8}")
    lines = [head, "-" * len(head)]
    first = {}
    for r in rows:
        base = first.setdefault(r["views"], r["wall_s"])
        span = r.get("span_s")
        lines.append(f"{r['views']:>5} {r['variant']:>24} | {ms(r['wall_s']):>8} {r['wall_s'] / base:>6.3f} | "
                     f"{ms(r['dispatch_s']):>8} {ms(r['device_kernels_s']):>8} {ms(span):>7} "
                     f"{ms(None if span is None else span - r['device_kernels_s']):>11} "
                     f"{ms(None if span is None else r['wall_s'] - span):>9} {r['launches']:>8.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
