"""``geolrm-jax bench``: inference time and memory per stage, for several view counts, sizes and dtypes.

    geolrm-jax bench [--model-config official|tiny|CONFIG.json] [--views 4 8 12 16 20] [--sizes 448 560]
                     [--dtypes bfloat16 float32] [--repeats 5] [--isolate] [--out results.json]

Stages (each its own compiled program, run back to back on device-resident inputs):

* ``encoder``: both networks' image encoders (DINOv2 + hierarchical features), i.e. proposal and
  reconstruction encoders together;
* ``proposal``: the proposal transformer over the (G/T)^3 tokens, the occupancy head and anchor selection;
* ``reconstruction``: the reconstruction transformer over the anchors (``capacity`` of them, static);
* ``decoding``: the latent -> Gaussians decoder.

``e2e`` is the whole model as one compiled program (``GeoLRM.__call__``: images and cameras in, Gaussians out,
always with the proposal's own anchors): what one inference call costs. The stage columns add up to more,
since each stage pays its own dispatch and the device idles between programs.

``time`` is the median wall time of ``--repeats`` runs after one warm-up (compilation excluded), with
``block_until_ready``. ``stage mem`` is XLA's buffer assignment of that stage's program: arguments (weights
and inputs) + outputs + temporaries - aliased bytes; it is reported on every backend. ``peak`` is the device's
``peak_bytes_in_use`` after the configuration ran ("n/a on CPU"). It is a high-water mark of the whole process,
so it only describes one configuration when each runs in its own process: ``--isolate`` does that.

Weights are random (seeded): with static shapes (the anchor capacity is fixed) the cost does not depend on
their values. The composition of the stages is checked against ``GeoLRM.__call__`` in the tests.
This module imports no ml_collections/clu/grain/tfds at import time; the model config (ml_collections) is
imported when the command runs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

STAGES = ("encoder", "proposal", "reconstruction", "decoding")
DEFAULT_VIEWS = (4, 8, 12, 16, 20)
DEFAULT_SIZES = (448, 560)
DEFAULT_DTYPES = ("bfloat16", "float32")


class Stages(NamedTuple):
    """Pure functions of (variables, ...) making up ``GeoLRM.__call__``."""

    encoder: callable  # (variables, images, c2ws, Ks) -> (proposal feats, reconstruction feats)
    proposal: callable  # (variables, feats, c2ws, Ks, view_mask) -> (anchors, anchor_mask)
    reconstruction: callable  # (variables, feats, c2ws, Ks, view_mask, anchors, anchor_mask) -> latents
    decoding: callable  # (variables, latents, anchors, anchor_mask) -> Gaussians


def build_stages(config, size: int) -> Stages:
    """The stages of ``GeoLRM(config)`` for ``size`` px inputs: its stage methods, on the model's variables."""
    from geolrm_jax.model.encoder import spatial_shapes
    from geolrm_jax.model.geolrm import GeoLRM
    from geolrm_jax.model.proposal import select_anchors

    model, pc = GeoLRM(config), config.proposal
    shapes = spatial_shapes(config.encoder, size, size)

    def encode(variables, images, c2ws, Ks):
        view_mask = np.ones(images.shape[:2], bool)
        return model.apply(variables, images, c2ws, Ks, view_mask, method=GeoLRM.encode)

    def propose(variables, feats, c2ws, Ks, view_mask):
        logits = model.apply(variables, feats, shapes, c2ws, Ks, view_mask, method=GeoLRM.propose_from_features)
        return select_anchors(logits, pc.capacity, pc.xyz_scale)

    def reconstruct(variables, feats, c2ws, Ks, view_mask, anchors, anchor_mask):
        return model.apply(variables, feats, shapes, c2ws, Ks, view_mask, anchors, anchor_mask,
                           method=GeoLRM.reconstruct_latents)

    def decode(variables, latents, anchors, anchor_mask):
        return model.apply(variables, latents, anchors, anchor_mask, method=GeoLRM.decode)

    return Stages(encode, propose, reconstruct, decode)


def example_inputs(num_views: int, size: int, seed: int = 0):
    """Random images and SV3D-orbit cameras (views cycle through the 21 preset poses): (B=1, V, ...)."""
    import jax.numpy as jnp

    from geolrm_jax import inputs

    c2w, K = inputs.preset_cameras("sv3d", 1.5)
    idx = np.floor(np.arange(num_views) * (21 / num_views)).astype(int) % 21
    images = np.random.default_rng(seed).uniform(0, 1, (1, num_views, size, size, 3)).astype(np.float32)
    return (jnp.asarray(images), jnp.asarray(c2w[idx])[None], jnp.asarray(K[idx])[None],
            jnp.ones((1, num_views), bool))


def surface_anchors(proposal_config, capacity: int, radius: float = 0.7, seed: int = 0):
    """Anchors of an object-like shape: the voxels of the proposal grid whose centres lie within one voxel of
    a sphere of ``radius`` (in grid units, [-1, 1] = the grid's extent), a seeded random subset of
    ``capacity`` of them (the original subsamples at random) kept in raster order, scaled by ``xyz_scale``.

    Random weights make the proposal stage select voxels scattered through the whole grid, with no spatial
    coherence between consecutive anchors; a real object's anchors lie on its surface. Returns anchors
    (1, capacity, 3) float32 and mask (1, capacity) bool (all True when the shell has enough voxels).
    """
    import jax.numpy as jnp

    from geolrm_jax.model.proposal import linspace_like_torch

    g = proposal_config.grid_size
    lin = linspace_like_torch(g)
    grid = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    voxel = 2.0 / (g - 1)
    idx = np.flatnonzero(np.abs(np.linalg.norm(grid, axis=-1) - radius) <= voxel)
    if len(idx) > capacity:
        idx = np.sort(np.random.default_rng(seed).choice(idx, capacity, replace=False))
    anchors = np.zeros((1, capacity, 3), np.float32)
    anchors[0, :len(idx)] = grid[idx] * np.float32(proposal_config.xyz_scale)
    mask = np.zeros((1, capacity), bool)
    mask[0, :len(idx)] = True
    return jnp.asarray(anchors), jnp.asarray(mask)


class StageResult(NamedTuple):
    seconds: float
    memory_bytes: int | None


def _time_stage(fn, args, repeats: int):
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    stats = compiled.memory_analysis()
    memory = None if stats is None else int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                                            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, StageResult(statistics.median(times), memory)


def bench_one(config, variables, num_views: int, size: int, repeats: int, anchors: str = "proposal") -> dict:
    """Time the four stages for one (views, size) with ``config.dtype``; returns a result row.

    anchors: "proposal" feeds the proposal stage's anchors to the reconstruction, "surface" those of
    ``surface_anchors`` (the proposal stage is still timed)."""
    from geolrm_jax import inference

    stages = build_stages(config, size)
    images, c2ws, Ks, view_mask = example_inputs(num_views, size)
    (feats_p, feats_r), enc = _time_stage(stages.encoder, (variables, images, c2ws, Ks), repeats)
    (anchor_xyz, mask), prop = _time_stage(stages.proposal, (variables, feats_p, c2ws, Ks, view_mask), repeats)
    if anchors == "surface":
        anchor_xyz, mask = surface_anchors(config.proposal, mask.shape[-1])
    elif anchors != "proposal":
        raise ValueError(f"anchors must be 'proposal' or 'surface', got {anchors!r}")
    latents, rec = _time_stage(stages.reconstruction,
                               (variables, feats_r, c2ws, Ks, view_mask, anchor_xyz, mask), repeats)
    _, dec = _time_stage(stages.decoding, (variables, latents, anchor_xyz, mask), repeats)
    results = dict(zip(STAGES, (enc, prop, rec, dec), strict=True))
    from geolrm_jax.model.geolrm import GeoLRM

    _, e2e = _time_stage(GeoLRM(config).apply, (variables, images, c2ws, Ks, view_mask), repeats)
    return {
        "views": num_views, "size": size, "dtype": config.dtype, "anchor_source": anchors,
        "time_s": {k: r.seconds for k, r in results.items()},
        "stage_memory_bytes": {k: r.memory_bytes for k, r in results.items()},
        "total_s": sum(r.seconds for r in results.values()),
        "end_to_end_s": e2e.seconds, "end_to_end_memory_bytes": e2e.memory_bytes,
        "peak_bytes": inference.peak_device_memory(),
        "anchors": int(np.asarray(mask).sum()), "capacity": int(mask.shape[-1]),
    }


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{1e3 * seconds:.1f}"


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def format_table(rows: list[dict]) -> str:
    """Per-stage table plus a bf16-vs-fp32 side-by-side table with ratios (when both dtypes ran)."""
    head = (f"{'views':>5} {'size':>5} {'dtype':>8} | " + " ".join(f"{s + ' ms':>17}" for s in STAGES)
            + f" | {'total ms':>9} {'e2e ms':>8} | " + " ".join(f"{s[:5] + ' MiB':>9}" for s in STAGES)
            + f" | {'peak MiB':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['views']:>5} {r['size']:>5} {r['dtype']:>8} | "
            + " ".join(f"{1e3 * r['time_s'][s]:>17.1f}" for s in STAGES)
            + f" | {1e3 * r['total_s']:>9.1f} {_ms(r.get('end_to_end_s')):>8} | "
            + " ".join(f"{_mib(r['stage_memory_bytes'][s]):>9}" for s in STAGES)
            + f" | {_mib(r['peak_bytes']) if r['peak_bytes'] is not None else 'n/a on CPU':>10}")
    by_key = {(r["views"], r["size"], r["dtype"]): r for r in rows}
    pairs = [(k[0], k[1]) for k in by_key if k[2] == "float32" and (k[0], k[1], "bfloat16") in by_key]
    if pairs:
        lines += ["", f"{'views':>5} {'size':>5} | {'fp32 ms':>9} {'bf16 ms':>9} {'fp32/bf16':>9} | "
                  f"{'fp32 peak MiB':>13} {'bf16 peak MiB':>13}"]
        for v, s in sorted(pairs):
            a, b = by_key[(v, s, "float32")], by_key[(v, s, "bfloat16")]
            lines.append(f"{v:>5} {s:>5} | {1e3 * a['total_s']:>9.1f} {1e3 * b['total_s']:>9.1f} "
                         f"{a['total_s'] / b['total_s']:>9.2f} | {_mib(a['peak_bytes']):>13} "
                         f"{_mib(b['peak_bytes']):>13}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geolrm-jax bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="official", help="official | tiny | config.json")
    p.add_argument("--views", type=int, nargs="+", default=list(DEFAULT_VIEWS))
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="multiples of 28")
    p.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float32"], default=list(DEFAULT_DTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isolate", action="store_true", help="run each configuration in its own process")
    p.add_argument("--budget-s", type=float, help="start no new configuration after this many seconds")
    p.add_argument("--out", help="write the rows as JSON here (rewritten after every configuration)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out this command wrote")
    p.add_argument("--anchors", default="proposal", choices=("proposal", "surface"),
                   help="reconstruction anchors: the proposal stage's (with random weights, voxels scattered "
                        "through the grid) or a sphere's surface voxels (object-like locality)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. attention_over_heads=False or "
                        "reconstruction.layers=8 (Python literal values; repeatable)")
    return p


def apply_overrides(config, overrides: list[str]):
    """Set ``KEY=VALUE`` overrides (dotted keys, Python literals) on an attribute-style config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = getattr(node, part)
        if not hasattr(node, leaf):
            raise ValueError(f"--set {item!r}: the model config has no field {key!r}")
        setattr(node, leaf, value)
    return config


@functools.lru_cache(maxsize=2)
def _variables(model_config: str, overrides: tuple[str, ...], seed: int, dtype: str):
    """Random variables as `inference.Reconstructor` holds them: kernels in the compute dtype (cast on the
    host, so the device never holds a float32 copy)."""
    from geolrm_jax import inference
    from geolrm_jax.model import convert

    config = apply_overrides(convert.config_from_arg(model_config), list(overrides))
    config.dtype = dtype
    return inference.random_variables(config, seed, inference=True)


def run(args) -> list[dict]:
    """All configurations (dtype-major, then size, then views); stops starting new ones past ``--budget-s``
    and rewrites ``--out`` after each, so a run cut short keeps what it measured."""
    from geolrm_jax.model import convert

    rows, skipped, start = [], [], time.perf_counter()
    for dtype in args.dtypes:
        for size in args.sizes:
            for views in args.views:
                if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    skipped.append((views, size, dtype))
                    continue
                if args.isolate:
                    rows.append(_run_isolated(args, dtype, size, views))
                else:
                    config = apply_overrides(convert.config_from_arg(args.model_config), args.set)
                    config.dtype = dtype
                    variables = _variables(args.model_config, tuple(args.set), args.seed, dtype)
                    rows.append(bench_one(config, variables, views, size, args.repeats, args.anchors))
                print(f"done: {views} views, {size} px, {dtype}: {1e3 * rows[-1]['total_s']:.1f} ms "
                      f"({time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)
                if args.out:
                    from geolrm_jax import io_atomic

                    io_atomic.write_text(args.out, json.dumps(rows, indent=1))
    if skipped:
        print(f"--budget-s {args.budget_s} reached; not run: " + ", ".join(f"{v} views {s} px {d}"
                                                                         for v, s, d in skipped),
              file=sys.stderr)
    return rows


def _run_isolated(args, dtype: str, size: int, views: int) -> dict:
    cmd = [sys.executable, "-m", "geolrm_jax.benchmark", "--model-config", args.model_config, "--views",
           str(views), "--sizes", str(size), "--dtypes", dtype, "--repeats", str(args.repeats), "--seed",
           str(args.seed), "--anchors", args.anchors, "--json-stdout", *(f"--set={item}" for item in args.set)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmark of {views} views, {size} px, {dtype} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])[0]


def results_problem(path) -> str | None:
    """None when ``path`` is a JSON list of result rows (what ``--out`` gets), else what it is instead."""
    try:
        rows = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as err:
        return f"not this command's JSON ({type(err).__name__})"
    ok = isinstance(rows, list) and all(isinstance(r, dict) and "total_s" in r for r in rows)
    return None if ok else "not a list of benchmark rows"


def check_arguments(args) -> None:
    """Arguments, the model config and ``--out`` checked before anything is compiled; ``ValueError``."""
    from geolrm_jax import io_atomic
    from geolrm_jax.model import convert

    bad = [s for s in args.sizes if s < 28 or s % 28]
    if bad:
        raise ValueError(f"--sizes must be positive multiples of 28 (patch 14, and 4 for the low level), got {bad}")
    if any(v < 1 for v in args.views):
        raise ValueError(f"--views must be at least 1, got {args.views}")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: must be at least 1")
    apply_overrides(convert.config_from_arg(args.model_config), args.set)
    if args.out:
        config_file = None if args.model_config in ("official", "tiny") else args.model_config
        io_atomic.check_destination(args.out, inputs=[config_file], overwrite=args.overwrite, owned=results_problem,
                                    folder=False)


def main(argv=None) -> int:
    parser = _parser()
    parser.add_argument("--json-stdout", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from geolrm_jax import io_atomic

    return io_atomic.run_command("geolrm-jax bench", lambda: _main(args))


def _main(args) -> int:
    check_arguments(args)
    rows = run(args)
    if args.json_stdout:
        print(json.dumps(rows))
        return 0
    import jax

    print(f"device: {jax.local_devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"model {args.model_config} {' '.join(args.set)}, anchors from {args.anchors}, median of {args.repeats}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
