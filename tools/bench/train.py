"""Stage-2 training-step benchmark: steps/s and peak memory, with and without remat.

One object (batch 1), `--input-views` input views at `--input-size`², `--target-views` target views rendered at
`--render-size`², anchors = the occupied voxels of a random ground-truth occupancy (a sphere shell filling
`--anchors` slots), the full stage-2 loss (MSE + 2·LPIPS(VGG16, random weights: timing only) + mask + depth +
depth TV) and the AdamW update of the reconstruction network (proposal frozen). Micro-batch steps (no
accumulation; the paper accumulates 8 of them per update).

    python tools/bench/train.py                      # paper stage-2 model, 8 targets at 448², GPU
    python tools/bench/train.py --model tiny --input-size 28 --render-size 32 --anchors 64 --steps 2   # CPU check

Peak memory: the device's peak_bytes_in_use (GPU; reset is not possible, so each setting runs in its own
process) and XLA's compiled memory analysis (temp + arguments + outputs), which also works on CPU.
Needs ml_collections (pure Python: carry its wheel where it is missing) but not clu/grain/tfds.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time


def sphere_shell_occupancy(grid: int, capacity: int):
    """(1, G, G, G) uint8: a sphere shell with about `capacity` voxels."""
    import numpy as np

    c = (np.arange(grid) + 0.5) / grid * 2 - 1
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    order = np.argsort(np.abs(r - 0.6), axis=None)[:capacity]
    occ = np.zeros(grid ** 3, np.uint8)
    occ[order] = 1
    return occ.reshape(1, grid, grid, grid)


def make_batch(args, grid):
    import numpy as np

    from geolrm_jax import geometry

    rng = np.random.default_rng(0)
    vi, vt = args.input_views, args.target_views
    az_in = np.arange(vi) * 360.0 / vi
    az_t = rng.uniform(0, 360, vt)
    c2w_in = np.asarray(geometry.spherical_c2w(az_in, np.full(vi, 20.0), np.full(vi, 1.6)), np.float32)[None]
    c2w_t = np.asarray(geometry.spherical_c2w(az_t, np.full(vt, 15.0), np.full(vt, 1.6)), np.float32)[None]
    K1 = np.asarray(geometry.fov_to_intrinsics(49.1), np.float32)
    return {
        "input_images": rng.uniform(size=(1, vi, args.input_size, args.input_size, 3)).astype(np.float32),
        "input_c2w": c2w_in, "input_K": np.broadcast_to(K1, (1, vi, 3, 3)).copy(),
        "input_mask": np.ones((1, vi), bool),
        "target_images": rng.uniform(size=(1, vt, args.render_size, args.render_size, 3)).astype(np.float32),
        "target_alpha": np.ones((1, vt, args.render_size, args.render_size), np.float32),
        "target_depth": np.full((1, vt, args.render_size, args.render_size), 1.6, np.float32),
        "target_c2w": c2w_t, "target_K": np.broadcast_to(K1, (1, vt, 3, 3)).copy(),
        "target_mask": np.ones((1, vt), bool),
        "background": np.ones((1, 3), np.float32),
        "occupancy": sphere_shell_occupancy(grid, args.anchors),
    }


def run_one(args, remat: bool) -> dict:
    """Compile and time the step in this process; returns a result row."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from geolrm_jax.model.config import official_model_config, tiny_model_config
    from geolrm_jax.train import steps
    from geolrm_jax.train.lpips import LPIPS
    from geolrm_jax.train.stages import Stage2Task
    from geolrm_jax.train.train_state import TrainState, make_optimizer

    model = official_model_config() if args.model == "paper" else tiny_model_config()
    model.dtype = args.dtype
    model.remat = remat
    model.attention_over_heads = False  # configs/stage2.py: the original's bf16 / flash-attention path
    model.scan_unroll = 1  # configs/stage2.py: the layer loop as a scan
    config = ml_collections.ConfigDict(dict(
        model=model,
        stage2=dict(anchors="ground_truth", num_anchors=args.anchors, render_capacity=args.render_capacity),
        loss=dict(mse=1.0, lpips=2.0, mask=1.0, depth=0.2, depth_tv=0.05),
        optim=dict(lr=1e-4, warmup_steps=12_000, total_steps=100_000, eta_min_ratio=0.001, b1=0.9, b2=0.95,
                   eps=1e-8, weight_decay=0.05, grad_clip=4.0, frozen=("proposal",)),
    ))
    size = max(16, args.render_size)
    lpips_vars = LPIPS().init(jax.random.PRNGKey(1), jnp.zeros((1, size, size, 3)), jnp.zeros((1, size, size, 3)))
    task = Stage2Task(config, lpips_vars)
    tx, schedule = make_optimizer(config.optim)
    batch = jax.tree.map(jnp.asarray, make_batch(args, model.proposal.grid_size))

    def create(rng):
        variables = task.init_variables(rng, batch)
        return TrainState.create(variables["params"], variables.get("batch_stats", {}), tx, rng)

    t0 = time.perf_counter()
    state = jax.jit(create)(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    step = jax.jit(steps.make_train_step(task.loss_fn, tx, schedule), donate_argnums=(0,))
    accum_batch = jax.tree.map(lambda x: x[None], batch)
    t0 = time.perf_counter()
    compiled = step.lower(state, accum_batch).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    xla_bytes = None
    if analysis is not None:
        xla_bytes = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                        + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
    state, metrics = compiled(state, accum_batch)  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, accum_batch)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "remat": remat, "steps_per_s": args.steps / elapsed, "s_per_step": elapsed / args.steps,
        "compile_s": compile_s, "init_s": init_s,
        "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30 if stats else None,
        "xla_gib": None if xla_bytes is None else xla_bytes / 2**30,
        "loss": float(metrics["loss"]), "overflow": float(metrics["render_overflow"]),
        "params_m": num_params / 1e6, "device": jax.devices()[0].device_kind,
        "gaussians": args.anchors * model.reconstruction.gs_per_token,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--input-views", type=int, default=7, help="input slots (data pipeline: 4 + 3)")
    parser.add_argument("--input-size", type=int, default=448)
    parser.add_argument("--target-views", type=int, default=8)
    parser.add_argument("--render-size", type=int, default=448)
    parser.add_argument("--anchors", type=int, default=8192)
    parser.add_argument("--render-capacity", type=int, default=0, help="tile intersections/camera; 0 = default")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--remat", choices=("both", "on", "off"), default="both")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("ROW " + json.dumps(run_one(args, args.child == "on")), flush=True)
        return 0
    rows = []
    settings = ("off", "on") if args.remat == "both" else (args.remat,)
    given = list(sys.argv[1:] if argv is None else argv)
    base = []  # the arguments without --remat and its value ("--remat on" or "--remat=on")
    for i, a in enumerate(given):
        if not (a.startswith("--remat") or (i and given[i - 1] == "--remat")):
            base.append(a)
    for setting in settings:  # one process per setting, so each peak-memory reading is its own
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *base, "--child", setting],
                              capture_output=True, text=True)
        row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
        if row is None:
            tail = (proc.stdout + proc.stderr)[-3000:]
            print(f"remat={setting}: failed (exit {proc.returncode}; out of memory?)\n{tail}", flush=True)
            row = {"remat": setting == "on", "error": f"exit {proc.returncode}"}
        rows.append(row)
    print(f"\nstage-2 train step, {args.model} model, {args.dtype}, 1 object, {args.input_views} inputs at "
          f"{args.input_size}², {args.target_views} targets at {args.render_size}², {args.anchors} anchors")
    header = f"{'remat':>6} {'steps/s':>9} {'s/step':>8} {'peak GiB':>9} {'XLA GiB':>8} {'compile s':>10} {'loss':>8}"
    print(header)
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    for r in rows:
        if "error" in r:
            print(f"{str(r['remat']):>6} {r['error']}")
            continue
        print(f"{str(r['remat']):>6} {r['steps_per_s']:>9.3f} {r['s_per_step']:>8.3f} {fmt(r['peak_gib'], '9.2f'):>9} "
              f"{fmt(r['xla_gib'], '8.2f'):>8} {r['compile_s']:>10.1f} {r['loss']:>8.4f}")
    ok = [r for r in rows if "error" not in r]
    if len(ok) == 2:
        off, on = ok
        peak = on["peak_gib"] / off["peak_gib"] if on["peak_gib"] and off["peak_gib"] else None
        print(f"remat on / off: speed {on['steps_per_s'] / off['steps_per_s']:.2f}x, "
              f"peak memory {fmt(peak, '.2f')}x, XLA memory {on['xla_gib'] / off['xla_gib']:.2f}x")
    if ok:
        print(f"device: {ok[0]['device']}, params {ok[0]['params_m']:.1f}M, gaussians {ok[0]['gaussians']}, "
              f"render overflow {ok[0]['overflow']:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    finite = all(math.isfinite(r["loss"]) for r in ok)
    if not finite:
        print("non-finite loss in a benchmark row")
    return 0 if len(ok) == len(rows) and finite else 1


if __name__ == "__main__":
    sys.exit(main())
