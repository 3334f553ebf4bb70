"""Cost of the float32 Gaussian decoder in bf16 inference: `config.decoder_dtype` float32 against bfloat16.

    python tools/bench/decoder_precision.py [--views 6 21] [--size 448] [--repeats 20] [--rounds 3]
        [--model-config official|tiny|CONFIG.json] [--out $OUT/decoder_precision.json]

Official config (by default), `dtype = "bfloat16"`, random weights held as `inference_variables` (kernels in
the dtype they compute in: the decoder's stay float32), random images. Two measurements, each variant compiled
once and timed in interleaved rounds (median wall ms over `--rounds` × `--repeats` calls, `block_until_ready`):
  decoder    the Gaussian decoder alone on (1, capacity, dim) float32 latents
  inference  the whole inference program (`GeoLRM.__call__`, with INFERENCE_COMPILER_OPTIONS) per view count
Prints one line per measurement and writes them as JSON rows with the device to `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import harness

VARIANTS = ("float32", "bfloat16")  # config.decoder_dtype


def interleaved(programs: dict, repeats: int, rounds: int) -> dict[str, float]:
    """{name: median ms} of {name: (compiled, args)} timed in alternating rounds after one warm-up each."""
    import jax

    samples = {name: [] for name in programs}
    for compiled, args in programs.values():
        jax.block_until_ready(compiled(*args))
    for _ in range(rounds):
        for name, (compiled, args) in programs.items():
            samples[name] += harness.call_times(lambda c=compiled, a=args: c(*a), repeats, warmup=0)
    return {name: 1e3 * statistics.median(times) for name, times in samples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, nargs="+", default=[6, 21])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model-config", default="official", help="official, tiny (a CPU smoke test) or a config.json")
    p.add_argument("--out", help="JSON rows")
    args = p.parse_args(argv)
    if args.size % 28 and args.model_config == "official" or min(args.views) < 1 or args.repeats < 1 or args.rounds < 1:
        p.error("--size must be a multiple of 28; --views, --repeats, --rounds positive")
    import jax
    import jax.numpy as jnp

    from geolrm_jax import benchmark, inference
    from geolrm_jax.model.convert import config_from_arg
    from geolrm_jax.model.decoder import GaussianDecoder
    from geolrm_jax.model.geolrm import INFERENCE_COMPILER_OPTIONS, GeoLRM, decoder_dtype, inference_variables

    configs = {}
    for name in VARIANTS:
        config = config_from_arg(args.model_config)
        config.dtype, config.decoder_dtype = "bfloat16", name
        configs[name] = config
    master = inference.random_variables(configs["float32"], seed=0)  # float32 on the host
    variables = {name: jax.device_put(inference_variables(master, cfg)) for name, cfg in configs.items()}
    device = jax.devices()[0].device_kind
    rc = configs["float32"].reconstruction
    capacity = configs["float32"].proposal.capacity
    rows = []

    latents = jax.random.normal(jax.random.PRNGKey(0), (1, capacity, rc.dim), jnp.float32)
    anchors, mask = benchmark.surface_anchors(configs["float32"].proposal, capacity)
    programs = {}
    for name, cfg in configs.items():
        decoder = GaussianDecoder(rc.gs_per_token, rc.offset_max, rc.scale_max, decoder_dtype(cfg))
        params = {"params": variables[name]["params"]["reconstruction"]["decoder"]}
        fn = jax.jit(lambda v, x, a, m, d=decoder: d.apply(v, x, a, m))
        programs[name] = (fn.lower(params, latents, anchors, mask).compile(), (params, latents, anchors, mask))
    ms = interleaved(programs, args.repeats, args.rounds)
    rows.append({"measure": "decoder", "anchors": capacity, "device": device, "ms": ms})
    print(f"decoder alone, {capacity} anchors: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)

    for views in args.views:
        images, c2ws, Ks, view_mask = benchmark.example_inputs(views, args.size)
        programs = {}
        for name, cfg in configs.items():
            model = GeoLRM(cfg)
            call = (variables[name], images, c2ws, Ks, view_mask)
            compiled = jax.jit(model.apply).lower(*call).compile(compiler_options=INFERENCE_COMPILER_OPTIONS or None)
            programs[name] = (compiled, call)
        ms = interleaved(programs, args.repeats, args.rounds)
        rows.append({"measure": "inference", "views": views, "size": args.size, "device": device, "ms": ms})
        print(f"inference, {views} views, {args.size} px: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()),
              flush=True)
        del programs
    if args.out:
        harness.write_json(args.out, {"jax": jax.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
