"""Lane layouts and block configurations of the deformable-sampling kernels, old against new in one run
(issue #4).

Settings (``OLD``, ``module_defaults()``): which kernels the op runs, with their lane chunk
(``channel_chunks``), corner-index clipping, block sizes and warps. ``OLD`` is the kernels as they were on
2026-11-25: one block of 64 lanes per head (chunk 0; C = 48, so 16 lanes are padding and 16 threads share each
query's corner arithmetic), clipped corner pixel indices, the configurations measured fastest for that layout
on an H100. ``default``: the module's current defaults (16-lane chunks for the fp32 backward: C = 48 is three
chunks, no padding, 4 threads per query).

One call does, stopping new measurements at ``--budget-s``:

1. ``check``: the op (forward and the four gradients) against the XLA reference for each setting: fp32
   (C = 24 / 48, masked views and queries, points on borders and outside the image, SV3D points) and bf16
   values; fp32 tolerance 1e-5 forward / 1e-4 gradients, bf16 1e-2.
2. ``op``: fwd and fwd+bwd through ``deformable_sample`` for old, default and the XLA reference at V = 21,
   S = 16384, 140^2 + 80^2, model-like SV3D points (``bench_deformable.jax_inputs``), fp32.
3. ``kernels``: each kernel alone (forward, point gradients (also with the shared-memory stores of
   ``REFERENCE_GRADIENT_TILE_STORE = False``), tent d_value and the one-launch tent backward with fp32 values;
   the interleaved, split and split-tent backwards with bf16 values) for the configurations of ``SWEEP`` (unclipped
   corner indices), each checked against the reference.
4. ``picked``: the default with each kernel's fastest correct configuration of 3; if that differs from the
   default, checked and timed through the op as in 1-2; then bf16 values and the V = 6, S = 8192 row.

Prints one table last (ms, XLA / this, old / this); raw results go to ``OUT/bench_deformable_layouts.json``.
``--tiny``: a CPU smoke test (interpret mode, small shapes).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_deformable as bd  # noqa: E402  (helpers: inputs, model-like points, timing)

# A setting: clipped corner indices or not; forward (chunk, block_q, warps, points per loop iteration); fp32 and
# 16-bit backward (chunk, variant, (block_q, window, warps), point-gradient (block_q, warps) of a split variant,
# points per loop iteration).
OLD = dict(clamp=True, forward=(0, 16, 4, 1), fp32=(0, "split_tent", (16, 8, 4), (None, 8), 1),
           bf16=(0, "interleaved", (16, None, 8), (None, 8), 1))
# Kernels alone: (chunk, block_q, window, warps, points per loop iteration); the first of each kernel is the
# old setting's.
SWEEP = {
    "forward": [(0, 16, None, 4, 1), (16, 32, None, 4, 1), (16, 16, None, 4, 1)],
    "point_grads": [(0, 16, None, 8, 1), (16, 16, None, 4, 1), (16, 16, None, 4, 2), (16, 32, None, 4, 1)],
    # The same kernel with d_reference_points stored as two (block_q,) vectors (a layout conversion through
    # shared memory, so XLA launches it preferring shared memory over L1): REFERENCE_GRADIENT_TILE_STORE off.
    "point_grads_smem": [(16, 16, None, 4, 1)],
    "dvalue_tent": [(0, 16, 8, 4, 1), (16, 16, 8, 2, 1), (16, 16, 8, 2, 2)],
    "tent_interleaved": [(16, 16, 8, 2, 1)],
    "interleaved": [(0, 16, None, 8, 1)],
    # Whole split backwards with 16-bit values (d_value kernel at (block_q, window, warps); the point-gradient
    # kernel at SPLIT_POINT_GRADS_CONFIG).
    "split": [(16, 16, None, 4, 1)],
    "split_tent": [(16, 16, 8, 2, 1)],
}
BF16_BACKWARDS = ("interleaved", "split", "split_tent")
ROW = (21, "560px", 16384)
SMALL_ROW = (6, "560px", 8192)
NAMES = ("out", "d_value", "d_ref", "d_offsets", "d_weights")


def module_defaults():
    """The kernels' current defaults as a setting."""
    from geolrm_kernels import deformable_sample_backward_triton as bwd
    from geolrm_kernels import deformable_sample_triton as tri

    def backward(chunk, variant):
        points = bwd.SPLIT_POINT_GRADS_CONFIG if chunk else bwd.SPLIT_POINT_GRADS_CONFIG_UNCHUNKED
        return chunk, variant, tri.BACKWARD_CONFIGS[variant], points, tri.BACKWARD_POINT_UNROLL

    forward = tri.FORWARD_CONFIGS[tri.FORWARD_VARIANT]
    return dict(clamp=tri.CLAMP_PIXELS,
                forward=(tri.FORWARD_CHANNEL_CHUNK, forward[0], forward[2], tri.FORWARD_POINT_UNROLL),
                fp32=backward(tri.BACKWARD_CHANNEL_CHUNK, tri.BACKWARD_VARIANT),
                bf16=backward(tri.BACKWARD_CHANNEL_CHUNK_16BIT, tri.BACKWARD_VARIANT_16BIT))


@contextlib.contextmanager
def applied(setting, dtype):
    """The kernels' module settings for ``dtype`` values while tracing (every jit inside traces anew)."""
    from geolrm_kernels import deformable_sample_backward_triton as bwd
    from geolrm_kernels import deformable_sample_triton as tri

    names = ("CLAMP_PIXELS", "FORWARD_CHANNEL_CHUNK", "BACKWARD_CHANNEL_CHUNK", "BACKWARD_CHANNEL_CHUNK_16BIT",
             "FORWARD_CONFIGS", "BACKWARD_VARIANT", "BACKWARD_VARIANT_16BIT", "BACKWARD_CONFIGS",
             "FORWARD_POINT_UNROLL", "BACKWARD_POINT_UNROLL")
    saved = {name: getattr(tri, name) for name in names}
    saved_points = bwd.SPLIT_POINT_GRADS_CONFIG, bwd.SPLIT_POINT_GRADS_CONFIG_UNCHUNKED
    chunk, variant, config, points, unroll = setting["bf16" if jnp_itemsize(dtype) == 2 else "fp32"]
    forward_chunk, forward_q, forward_warps, forward_unroll = setting["forward"]
    tri.FORWARD_POINT_UNROLL, tri.BACKWARD_POINT_UNROLL = forward_unroll, unroll
    tri.CLAMP_PIXELS = setting["clamp"]
    tri.FORWARD_CHANNEL_CHUNK = forward_chunk
    tri.FORWARD_CONFIGS = {**tri.FORWARD_CONFIGS, tri.FORWARD_VARIANT: (forward_q, None, forward_warps)}
    tri.BACKWARD_CHANNEL_CHUNK = tri.BACKWARD_CHANNEL_CHUNK_16BIT = chunk
    tri.BACKWARD_VARIANT = tri.BACKWARD_VARIANT_16BIT = variant
    tri.BACKWARD_CONFIGS = {**tri.BACKWARD_CONFIGS, variant: tuple(config)}
    bwd.SPLIT_POINT_GRADS_CONFIG = bwd.SPLIT_POINT_GRADS_CONFIG_UNCHUNKED = tuple(points)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(tri, name, value)
        bwd.SPLIT_POINT_GRADS_CONFIG, bwd.SPLIT_POINT_GRADS_CONFIG_UNCHUNKED = saved_points


def jnp_itemsize(dtype):
    import numpy as np

    return np.dtype(dtype).itemsize


def rel_err(jnp, a, b):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    err = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
    return err if bool(jnp.all(jnp.isfinite(a))) else float("nan")


def op_vjp(jax, ds, implementation, shapes, args, masks=None):
    value, ref, offsets, weights, cot = args
    masks = masks or {}
    f = lambda *a: ds.deformable_sample(*a, shapes, implementation=implementation, **masks)  # noqa: E731
    out, vjp = jax.vjp(f, value, ref, offsets, weights)
    return (out, *vjp(cot))


def check(jax, jnp, ds, settings, log, implementation):
    """Op vs reference for each setting; returns {setting: passed}."""
    cases = [  # (v, shapes, s, heads, c, dtype, masked, points)
        (3, ((28, 28), (16, 16)), 300, 4, 24, jnp.float32, True, "random"),
        (6, ((140, 140), (80, 80)), 2048, 16, 48, jnp.float32, True, "sv3d_morton"),
        (6, ((112, 112), (64, 64)), 2048, 16, 48, jnp.bfloat16, True, "random"),
    ]
    if implementation == "pallas_interpret":
        cases = [(2, ((9, 12), (4, 4)), 16, 2, 48, jnp.float32, True, "random"),
                 (2, ((9, 12), (4, 4)), 16, 2, 24, jnp.bfloat16, True, "random")]
    passed = {name: True for name in settings}
    for v, shapes, s, heads, c, dtype, masked, points in cases:
        k = jax.random.split(jax.random.key(1), 6)
        value = jax.random.normal(k[0], (1, v, sum(h * w for h, w in shapes), heads, c)).astype(dtype)
        if points == "random":
            ref = jax.random.uniform(k[1], (1, v, s, 2), minval=-0.1, maxval=1.1)
            ref = ref.at[:, :, :4].set(jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / shapes[0][1], 1.0], [-0.3, 0.5]]))
            offsets = jax.random.normal(k[2], (1, s, heads, 2, bd.POINTS, 2)) * 0.05
        else:
            ref = jnp.asarray(bd.model_reference_points(v, s, points, seed=3))
            wh = jnp.array([[w, h] for h, w in shapes], jnp.float32)[:, None, :]
            offsets = jax.random.normal(k[2], (1, s, heads, 2, bd.POINTS, 2)) * 3 / wh
        weights = jax.nn.softmax(jax.random.normal(k[3], (1, s, heads, 2 * bd.POINTS)), -1).reshape(
            1, s, heads, 2, bd.POINTS)
        masks = dict(view_mask=jnp.arange(v)[None] != 1, query_mask=jax.random.uniform(k[4], (1, s)) > 0.2) \
            if masked else {}
        cot = jax.random.normal(k[5], (1, v, s, heads, c)).astype(dtype)
        args = (value, ref, offsets, weights, cot)
        want = op_vjp(jax, ds, "xla", shapes, args, masks)
        for name, setting in settings.items():
            with applied(setting, dtype):
                got = op_vjp(jax, ds, implementation, shapes, args, masks)
            tol = 1e-2 if dtype == jnp.bfloat16 else None
            for what, a, b, t in zip(NAMES, got, want, (tol or 1e-5,) + (tol or 1e-4,) * 4, strict=True):
                err = rel_err(jnp, a, b)
                ok = err <= t  # NaN fails
                passed[name] &= ok
                log(f"check {name} V={v} S={s} H={heads} C={c} {jnp.dtype(dtype).name} masked={masked} {points} "
                    f"{what}: {err:.2e} (tol {t:.0e}) {'PASS' if ok else 'FAIL'}")
    return passed


def time_op(jax, ds, implementation, shapes, args, reps, setting=None):
    """fwd / fwd+bwd median ms, fwd temp bytes, and the fwd+bwd results."""
    value, ref, offsets, weights, cot = args
    f = lambda v, r, o, a: ds.deformable_sample(v, r, o, a, shapes, implementation=implementation)  # noqa: E731

    def fwd_bwd(v, r, o, a, g):
        out, vjp = jax.vjp(f, v, r, o, a)
        return out, vjp(g)

    entry = {}
    with applied(setting, value.dtype) if setting else contextlib.nullcontext():
        fwd = jax.jit(f).lower(value, ref, offsets, weights).compile()
        both = jax.jit(fwd_bwd).lower(*args).compile()
    stats = fwd.memory_analysis()
    entry["fwd_temp"] = stats.temp_size_in_bytes if stats is not None else None
    entry["fwd_ms"] = bd._median_time(lambda: fwd(value, ref, offsets, weights), jax.block_until_ready, reps)
    entry["fwdbwd_ms"] = bd._median_time(lambda: both(*args), jax.block_until_ready, reps)
    out, grads = both(*args)
    return entry, (out, *grads)


def kernel_fn(jax, kind, chunk, block_q, window, warps, unroll, shapes, interpret):
    """One kernel alone as a jitted function of (value, ref, offsets, weights, mask, cot)."""
    from geolrm_kernels import deformable_sample_backward_triton as bwd
    from geolrm_kernels import deformable_sample_triton as tri

    if kind == "forward":
        return jax.jit(lambda *a: (tri.forward(*a[:5], shapes, block_q=block_q, num_warps=warps, chunk=chunk,
                                               point_unroll=unroll, interpret=interpret),))
    if kind in tri.BACKWARD_VARIANTS:  # a whole backward, one launch or two
        return jax.jit(lambda *a: tri.backward(*a[:5], shapes, a[5], variant=kind, block_q=block_q, window=window,
                                               num_warps=warps, chunk=chunk, point_unroll=unroll,
                                               interpret=interpret))
    value_grad, point_grads, views_in_grid = bd.BACKWARD_PARTS[kind.removesuffix("_smem")]
    tile_store = not kind.endswith("_smem")

    def f(*a):
        saved, tri.REFERENCE_GRADIENT_TILE_STORE = tri.REFERENCE_GRADIENT_TILE_STORE, tile_store  # at trace time
        try:
            return traced(*a)
        finally:
            tri.REFERENCE_GRADIENT_TILE_STORE = saved

    def traced(*a):
        order = tri.resolve_query_order(None, a[1], a[4], True)
        d_value, d_ref, d_off, d_attn = bwd.backward_call(
            *a[:5], shapes, a[5], order, value_grad=value_grad, point_grads=point_grads, views_in_grid=views_in_grid,
            block_q=block_q, num_warps=warps, window=window, interpret=interpret, chunk=chunk, point_unroll=unroll)
        if not point_grads:
            return (d_value.reshape(a[0].shape),)
        b, v, q, heads = a[0].shape[0], a[0].shape[1], a[2].shape[1], a[0].shape[3]
        return d_ref.reshape(b, v, q, heads, 2).sum(axis=3), d_off.reshape(a[2].shape), d_attn.reshape(a[3].shape)

    return jax.jit(f)


def sweep_kernels(jax, jnp, ds, args, shapes, dtype, reps, deadline, log, interpret, kinds):
    value, ref, offsets, weights, cot = args
    mask = jnp.ones(ref.shape[:3], bool)
    value32, cot32 = value.astype(jnp.float32), cot.astype(jnp.float32)
    grads = jax.jit(lambda *a: ds._reference_backward(*a[:5], shapes, a[5]))(value32, ref, offsets, weights, mask,
                                                                             cot32)
    fwd = jax.jit(lambda *a: ds._reference_forward(*a, shapes))(value32, ref, offsets, weights, mask)
    wants = {"forward": (fwd,), "dvalue_tent": grads[:1], "point_grads": grads[1:], "interleaved": grads,
             "tent_interleaved": grads, "split": grads, "split_tent": grads, "point_grads_smem": grads[1:]}
    tol = 1e-2 if dtype == "bfloat16" else 1e-4
    results = []
    for kind in kinds:
        for chunk, block_q, window, warps, unroll in SWEEP[kind]:
            entry = dict(kernel=kind, chunk=chunk, block_q=block_q, window=window, warps=warps, unroll=unroll,
                         dtype=dtype)
            if time.time() > deadline:
                entry["error"] = "skipped (time budget)"
            else:
                try:
                    f = kernel_fn(jax, kind, chunk, block_q, window, warps, unroll, shapes, interpret)
                    call = lambda f=f: f(value, ref, offsets, weights, mask, cot)  # noqa: E731
                    got = jax.block_until_ready(call())
                    entry["rel_err"] = max(rel_err(jnp, a, b) for a, b in zip(got, wants[kind], strict=True))
                    del got
                    entry["ms"] = bd._median_time(call, jax.block_until_ready, reps)
                    entry["ok"] = entry["rel_err"] <= tol
                except Exception as err:  # a config that does not compile is reported, not fatal
                    entry["error"] = repr(err)[:300]
            log(f"kernel {entry}")
            results.append(entry)
    return results


def fastest(results, kind, dtype, chunk=None, unroll=None):
    """The fastest correct entry of a kernel (of one lane chunk and unroll, if given), or None."""
    return min((e for e in results if e["kernel"] == kind and e["dtype"] == dtype and e.get("ok")
                and chunk in (None, e["chunk"]) and unroll in (None, e["unroll"])),
               key=lambda e: e["ms"], default=None)


def picked_setting(results, default):
    """The default setting with each kernel's fastest measured configuration: the forward's; for fp32 the pair
    of split kernels of one lane chunk and unroll with the smallest sum, or the one-launch tent backward where
    that is faster; for bf16 the fastest whole backward of BF16_BACKWARDS."""
    setting = json.loads(json.dumps(default))
    forward = fastest(results, "forward", "float32")
    if forward:
        setting["forward"] = [forward["chunk"], forward["block_q"], forward["warps"], forward["unroll"]]
    groups = sorted({(e["chunk"], e["unroll"]) for e in results})
    pairs = [(fastest(results, "dvalue_tent", "float32", *group), fastest(results, "point_grads", "float32", *group))
             for group in groups]
    pairs = [(t, p) for t, p in pairs if t and p]
    one_launch = fastest(results, "tent_interleaved", "float32")
    if pairs:
        tent, points = min(pairs, key=lambda pair: pair[0]["ms"] + pair[1]["ms"])
        if one_launch is None or tent["ms"] + points["ms"] <= one_launch["ms"]:
            setting["fp32"] = [tent["chunk"], "split_tent", [tent["block_q"], tent["window"], tent["warps"]],
                               [points["block_q"], points["warps"]], tent["unroll"]]
            one_launch = None
    if one_launch:
        setting["fp32"] = [one_launch["chunk"], "tent_interleaved",
                           [one_launch["block_q"], one_launch["window"], one_launch["warps"]], setting["fp32"][3],
                           one_launch["unroll"]]
    whole = [e for e in (fastest(results, kind, "bfloat16") for kind in BF16_BACKWARDS) if e]
    if whole:
        best = min(whole, key=lambda e: e["ms"])
        from geolrm_kernels import deformable_sample_backward_triton as bwd

        points = setting["bf16"][3] if best["kernel"] == "interleaved" else (
            list(bwd.SPLIT_POINT_GRADS_CONFIG) if best["chunk"] else list(bwd.SPLIT_POINT_GRADS_CONFIG_UNCHUNKED))
        setting["bf16"] = [best["chunk"], best["kernel"], [best["block_q"], best["window"], best["warps"]], points,
                           best["unroll"]]
    return setting


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=170.0, help="no new measurement after this many seconds")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: interpret mode, tiny shapes")
    args = parser.parse_args(argv)
    start = time.time()
    deadline = start + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    from geolrm_kernels import deformable_sample as ds

    log_file = open(os.path.join(args.out, "bench_deformable_layouts.log"), "a")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    interpret = args.tiny
    implementation = "pallas_interpret" if interpret else "pallas"
    row, small_row = ((2, "tiny", 64), (2, "tiny", 32)) if args.tiny else (ROW, SMALL_ROW)
    points = "random" if args.tiny else "sv3d"
    default = module_defaults()
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv,
                       "jax": jax.__version__, "device": str(jax.devices()[0].device_kind), "old": OLD,
                       "default": default}, "op": []}

    def save():
        with open(os.path.join(args.out, "bench_deformable_layouts.json"), "w") as f:
            json.dump(report, f, indent=1)

    def inputs(row, dtype):
        v, lv, s = row
        value, ref, offsets, weights, cot = bd.jax_inputs(jax, jnp, v, bd.LEVEL_SETS[lv], s, points=points)
        return value.astype(dtype), ref, offsets, weights, cot.astype(dtype)

    def op_rows(row, dtype, settings):
        if time.time() > deadline:
            log(f"op {row} {dtype}: skipped (time budget)")
            return
        data = inputs(row, dtype)
        shapes = bd.LEVEL_SETS[row[1]]
        entry, want = time_op(jax, ds, "xla", shapes, data, args.reps)
        report["op"].append(dict(row=row, dtype=dtype, setting="xla", **entry))
        log(f"op xla {row} {dtype}: {entry}")
        for name, setting in settings.items():
            if time.time() > deadline:
                break
            entry, got = time_op(jax, ds, implementation, shapes, data, args.reps, setting)
            entry["rel_err_vs_xla"] = [rel_err(jnp, a, b) for a, b in
                                       zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)]
            report["op"].append(dict(row=row, dtype=dtype, setting=name, config=setting, **entry))
            log(f"op {name} {row} {dtype}: {entry}")
        save()

    report["check"] = check(jax, jnp, ds, {"old": OLD, "default": default}, log, implementation)
    save()
    op_rows(row, "float32", {"old": OLD, "default": default})
    shapes = bd.LEVEL_SETS[row[1]]
    kernels = sweep_kernels(jax, jnp, ds, inputs(row, "float32"), shapes, "float32", args.reps, deadline, log,
                            interpret, ("forward", "point_grads", "point_grads_smem", "dvalue_tent",
                                                       "tent_interleaved"))
    kernels += sweep_kernels(jax, jnp, ds, inputs(row, "bfloat16"), shapes, "bfloat16", args.reps, deadline, log,
                             interpret, BF16_BACKWARDS)
    report["kernels"] = kernels
    picked = picked_setting(kernels, default)
    report["picked"] = picked
    save()
    log(f"picked {picked}")
    final = {"old": OLD, "default": default}
    if json.dumps(picked) != json.dumps(json.loads(json.dumps(default))):
        report["check"].update(check(jax, jnp, ds, {"picked": picked}, log, implementation))
        op_rows(row, "float32", {"picked": picked})
        final["picked"] = picked
    op_rows(row, "bfloat16", final)
    op_rows(small_row, "float32", final)
    save()
    log("\n" + table(report))
    return 0 if all(report["check"].values()) else 1


def table(report):
    meta = report["meta"]
    lines = [f"{meta['device']}, jax {meta['jax']}, {meta['date']}; checks: {report.get('check')}",
             "", "| V, S, dtype | setting | fwd ms | fwd+bwd ms | XLA÷this fwd+bwd | old÷this fwd+bwd | fwd temp MB |"
             " max rel err vs XLA |", "|---|---|---|---|---|---|---|---|"]
    rows = report["op"]
    for e in rows:
        same = [r for r in rows if r["row"] == e["row"] and r["dtype"] == e["dtype"]]
        xla = next((r for r in same if r["setting"] == "xla"), None)
        old = next((r for r in same if r["setting"] == "old"), None)
        ratio = lambda r, e=e: f"{r['fwdbwd_ms'] / e['fwdbwd_ms']:.2f}×" if r else "—"  # noqa: E731
        err = max(e["rel_err_vs_xla"]) if "rel_err_vs_xla" in e else None
        lines.append(f"| {e['row'][0]}, {e['row'][2]}, {e['dtype']} | {e['setting']} | {e['fwd_ms']:.2f} | "
                     f"{e['fwdbwd_ms']:.2f} | {ratio(xla)} | {ratio(old)} | "
                     f"{(e['fwd_temp'] or 0) / 1e6:.1f} | {'—' if err is None else f'{err:.1e}'} |")
    lines += ["", "| kernel | dtype | chunk | block_q | window | warps | unroll | ms | first÷this | rel err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in report.get("kernels", []):
        first = next(f for f in report["kernels"] if f["kernel"] == e["kernel"] and f["dtype"] == e["dtype"])
        if "ms" in e:
            ratio = f"{first['ms'] / e['ms']:.2f}×" if "ms" in first else "—"
            lines.append(f"| {e['kernel']} | {e['dtype']} | {e['chunk']} | {e['block_q']} | {e['window'] or '—'} | "
                         f"{e['warps']} | {e['unroll']} | {e['ms']:.2f} | {ratio} | {e['rel_err']:.1e} |")
        else:
            lines.append(f"| {e['kernel']} | {e['dtype']} | {e['chunk']} | {e['block_q']} | {e['window'] or '—'} | "
                         f"{e['warps']} | {e['unroll']} | {e.get('error', '—')[:60]} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
