"""Scaling model of the paper's stage-2 train step on meshes of 8 to 1,024 devices, from compiled programs.

For every mesh shape the step is compiled ahead of time (`jit(...).lower(abstract inputs).compile()`, nothing
runs) on that many virtual CPU devices, with the trainer's shardings (geolrm_jax/train/sharding.py) and one
object per device (weak scaling: the global micro-batch is the device count). From the compiled program:

* per-device memory: XLA's `memory_analysis()` (arguments + temporaries + outputs − aliased);
* collectives: every all-reduce / all-gather / reduce-scatter / all-to-all / collective-permute of the
  optimized HLO, its bytes, its replica groups and how often it runs (trip counts of the loops around it).

Devices are grouped in *granules* of `--granule` consecutive devices (hosts of 8 GPUs joined by NVLink, or
TPU slices joined by ICI); the mesh's data axis is laid across granules first, as
`mesh_utils.create_hybrid_device_mesh` does. A collective whose group stays inside a granule uses the fast link;
one that spans g granules runs hierarchically (inside each granule, then g-way across on 1/k of the data,
k = members per granule), the part across granules on the slow link. Per-device bytes follow the ring
algorithm (all-reduce 2(n−1)/n·S, all-gather and reduce-scatter (n−1)/n·S, S the full size).

Predicted micro-step time = the measured single-GPU step (one object) + communication time, where the
communication is either not overlapped with compute (upper bound) or fully overlapped (lower bound,
max(compute, communication)); scaling efficiency = single-device step / predicted step. The memory estimate
for the GPU is the measured single-GPU peak plus the compiled per-device change relative to the compiled
1-device program (parameter and optimizer shards, gathered weights and communication buffers do not depend on
the backend; activations are those of one object at every size).

    python tools/scaling_model.py --json scaling.json --markdown scaling.md     # all default meshes
    python tools/scaling_model.py --meshes 1:1x1x1,8:1x8x1 --input-size 56 --render-size 32   # quick check

A mesh is written DEVICES:DCNxDATAxFSDP (data across granules × data inside × fsdp inside). Each mesh is
compiled in its own process (`--jobs` at a time): XLA's CPU device count is fixed per process.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

DEFAULT_MESHES = ("1:1x1x1", "8:1x8x1", "8:1x1x8", "64:8x8x1", "64:8x1x8", "256:32x8x1", "256:32x1x8",
                  "1024:128x8x1", "1024:128x1x8")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


# ---------------------------------------------------------------------------------------------------------
# HLO text → collectives with their execution counts


def shape_bytes(text: str) -> int:
    """Bytes of an HLO shape string (array or tuple), e.g. '(f32[8,4]{1,0}, bf16[3])'."""
    return sum(DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text) if dtype in DTYPE_BYTES)


def parse_replica_groups(text: str, num_devices: int):
    """'{{0,1},{2,3}}' or the iota form '[2,4]<=[8]' / '[4,2]<=[2,4]T(1,0)' → list of lists of ids."""
    import numpy as np

    match = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if match:
        shape = [int(x) for x in match.group(1).split(",")]
        dims = [int(x) for x in match.group(2).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if match.group(3):
            ids = ids.transpose([int(x) for x in match.group(3).split(",")])
        return ids.reshape(shape[0], -1).tolist()
    match = re.search(r"replica_groups=\{(\{[\d,{}\s]*\})?\}", text)
    if match and match.group(1):
        return [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", match.group(1))]
    return [list(range(num_devices))]  # empty replica_groups = all devices


def parse_pairs(text: str):
    match = re.search(r"source_target_pairs=\{(.*?)\}\}?", text)
    return [(int(a), int(b)) for a, b in re.findall(r"\{(\d+),(\d+)\}", match.group(0))] if match else []


def split_computations(hlo: str):
    """{name: [instruction lines]} and the name of the ENTRY computation."""
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)
    return computations, entry


def trip_count(line: str, computations) -> int:
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    if match:
        return int(match.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", line)
    constants = []
    for inst in computations.get(cond.group(1), []) if cond else []:
        constants += [int(c) for c in re.findall(r"s32\[\] constant\((\d+)\)", inst)]
    return max(constants) if constants else 1


def execution_counts(computations, entry):
    """{computation: times it runs per call of ENTRY}: while bodies × trip count, other callees × 1."""
    counts = {entry: 1}
    order = [entry]
    while order:
        name = order.pop()
        for line in computations.get(name, []):
            if re.search(r"\swhile\(", line):
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                callees = [(body, trip_count(line, computations))]
            else:
                names = re.findall(r"(?:to_apply|calls|branch_computations=\{[^}]*|true_computation|"
                                   r"false_computation)=%?([\w.\-]+)", line)
                names += re.findall(r"branch_computations=\{([^}]*)\}", line)
                callees = [(n.strip().lstrip("%"), 1) for group in names for n in group.split(",") if n.strip()]
            for callee, factor in callees:
                if callee in computations and callee != name:
                    counts[callee] = counts.get(callee, 0) + counts[name] * factor
                    order.append(callee)
    return counts


def collectives(hlo: str, num_devices: int):
    """Collective ops of an optimized HLO module: dicts with kind, bytes (result), groups, count."""
    computations, entry = split_computations(hlo)
    counts = execution_counts(computations, entry)
    ops = []
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for name, lines in computations.items():
        for line in lines:
            match = pattern.search(line)
            if not match or counts.get(name, 0) == 0:
                continue
            kind, shape = match.group(2), match.group(1)
            size = shape_bytes(shape)
            if match.group(3) and kind in ("all-gather", "collective-permute") and shape.startswith("("):
                size = shape_bytes(shape.split("}, ", 1)[-1]) if "}, " in shape else size // 2
            op = dict(kind=kind, bytes=size, count=counts[name])
            if kind == "collective-permute":
                op["pairs"] = parse_pairs(line)
            else:
                op["groups"] = parse_replica_groups(line, num_devices)
            ops.append(op)
    return ops


def link_bytes(op, granule: int):
    """(fast, slow) bytes one device moves for one execution of `op` (hierarchical ring model)."""
    size = op["bytes"]
    if op["kind"] == "collective-permute":
        pairs = op.get("pairs") or []
        crosses = any(a // granule != b // granule for a, b in pairs)
        return (0.0, float(size)) if crosses else (float(size), 0.0)
    group = max(op["groups"], key=len)
    n = len(group)
    if n <= 1:
        return 0.0, 0.0
    g = len({d // granule for d in group})
    k = n // g
    if op["kind"] == "all-reduce":
        return 2 * (k - 1) / k * size, 2 * (g - 1) / g * size / k
    if op["kind"] == "all-gather":  # result is the full array
        return (k - 1) / k * size, (g - 1) / g * size / k
    if op["kind"] == "reduce-scatter":  # result is 1/n of the input
        full = size * n
        return (k - 1) / k * full, (g - 1) / g * full / k
    # all-to-all: the share sent to members outside the granule goes over the slow link
    return (k - 1) / n * size, (n - k) / n * size


def summarize_collectives(ops, granule: int):
    out = {"fast_bytes": 0.0, "slow_bytes": 0.0, "fast_ops": 0, "slow_ops": 0, "by_kind": {}}
    for op in ops:
        fast, slow = link_bytes(op, granule)
        out["fast_bytes"] += fast * op["count"]
        out["slow_bytes"] += slow * op["count"]
        out["fast_ops"] += op["count"] if fast else 0
        out["slow_ops"] += op["count"] if slow else 0
        kind = out["by_kind"].setdefault(op["kind"], {"ops": 0, "result_bytes": 0})
        kind["ops"] += op["count"]
        kind["result_bytes"] += op["bytes"] * op["count"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Compiling one mesh (child process)


def parse_mesh(text: str):
    devices, shape = text.split(":")
    dcn, data, fsdp = (int(x) for x in shape.split("x"))
    if dcn * data * fsdp != int(devices):
        raise SystemExit(f"scaling_model: mesh {text}: {dcn}x{data}x{fsdp} != {devices} devices")
    return int(devices), dcn, data, fsdp


def load_stage2_config():
    """configs/stage2.py. Where the input pipeline's dependencies (grain, PIL) are not installed, as on a bare GPU
    machine, its data section is left empty: the train step does not read it."""
    import types

    try:
        import geolrm_jax.data.pipeline  # noqa: F401
    except ImportError:
        import ml_collections

        stub = types.ModuleType("geolrm_jax.data.pipeline")
        stub.default_data_config = ml_collections.ConfigDict
        sys.modules["geolrm_jax.data.pipeline"] = stub
    from geolrm_jax.train.defaults import config_from_file

    return config_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                         "stage2.py"))


def abstract_batch(args, grid: int, num: int):
    import jax
    import jax.numpy as jnp

    vi, vt, si, sr = args.input_views, args.target_views, args.input_size, args.render_size
    f32 = jnp.float32
    shapes = {
        "input_images": ((vi, si, si, 3), f32), "input_c2w": ((vi, 4, 4), f32), "input_K": ((vi, 3, 3), f32),
        "input_mask": ((vi,), jnp.bool_), "target_images": ((vt, sr, sr, 3), f32),
        "target_alpha": ((vt, sr, sr), f32), "target_depth": ((vt, sr, sr), f32),
        "target_c2w": ((vt, 4, 4), f32), "target_K": ((vt, 3, 3), f32), "target_mask": ((vt,), jnp.bool_),
        "background": ((3,), f32), "occupancy": ((grid, grid, grid), jnp.uint8),
    }
    return {k: jax.ShapeDtypeStruct((num, *s), d) for k, (s, d) in shapes.items()}


def compile_mesh(args, mesh_text: str) -> dict:
    """Compile the stage-2 micro-step for one mesh in this process (XLA_FLAGS set by the parent)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from geolrm_jax.train import sharding, steps
    from geolrm_jax.train.lpips import LPIPS
    from geolrm_jax.train.stages import Stage2Task
    from geolrm_jax.train.train_state import TrainState, make_optimizer

    num, dcn, data, fsdp = parse_mesh(mesh_text)
    config = load_stage2_config()
    config.stage2.num_anchors = args.anchors
    if args.layers:
        config.model.reconstruction.layers = args.layers
    tx, schedule = make_optimizer(config.optim)
    grid = config.model.proposal.grid_size
    # Data axis across granules first: device index = (dcn, data, fsdp) row-major, as the hybrid mesh.
    if len(jax.devices()) < num:
        raise SystemExit(f"scaling_model: mesh {mesh_text} needs {num} devices, {len(jax.devices())} present")
    devices = np.asarray(jax.devices()[:num], dtype=object).reshape(dcn * data, fsdp)
    mesh = Mesh(devices, sharding.MESH_AXES)
    one = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype)[None], abstract_batch(args, grid, 1))
    size = max(16, args.render_size)
    lpips = jax.eval_shape(lambda k: LPIPS().init(k, jnp.zeros((1, size, size, 3)), jnp.zeros((1, size, size, 3))),
                           jax.random.PRNGKey(1))

    def create(rng):
        variables = Stage2Task(config, None).init_variables(rng, one)
        return TrainState.create(variables["params"], variables.get("batch_stats", {}), tx, rng)

    abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
    state_shardings = sharding.state_shardings(abstract, mesh, config.mesh.min_fsdp_size)
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct((1, *s.shape), s.dtype),
                         abstract_batch(args, grid, num))

    def step(state, batch, lpips_params):
        loss_fn = Stage2Task(config, lpips_params).loss_fn
        if args.batch_local:
            loss_fn = sharding.batch_local_loss(loss_fn, mesh)
        return steps.make_train_step(loss_fn, tx, schedule)(state, batch)

    replicated = sharding.replicated(mesh)
    jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh, 2), replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    t0 = time.perf_counter()
    with sharding.activation_sharding(mesh):
        lowered = jitted.lower(abstract, batch, lpips)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    if args.dump_hlo:
        os.makedirs(args.dump_hlo, exist_ok=True)
        with open(os.path.join(args.dump_hlo, mesh_text.replace(":", "_") + ".hlo.txt"), "w") as f:
            f.write(hlo)
    ops = collectives(hlo, num)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    trainable = sum(math.prod(x.shape) for k, v in abstract.params.items() if k not in config.optim.frozen
                    for x in jax.tree.leaves(v))
    measured = run_steps(args, compiled, create, state_shardings, batch, mesh) if args.run_steps else {}
    return {
        **measured, "device_kind": jax.devices()[0].device_kind,
        "mesh": mesh_text, "devices": num, "dcn": dcn, "data": data, "fsdp": fsdp, "compile_s": compile_s,
        "argument_bytes": int(mem.argument_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes),
        "device_bytes": int(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
                            - mem.alias_size_in_bytes),
        "params": params, "trainable_params": trainable, "collectives": ops,
        "jax": jax.__version__, "layers": config.model.reconstruction.layers, "batch_local": args.batch_local,
    }


def run_steps(args, compiled, create, state_shardings, abstract_batch_tree, mesh) -> dict:
    """Run the compiled step on real devices (--platform gpu --run-steps N): random images, a sphere-shell
    occupancy with `--anchors` voxels per object; returns the measured step time and peak memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from geolrm_jax import geometry
    from geolrm_jax.train import sharding
    from geolrm_jax.train.lpips import LPIPS

    rng = np.random.default_rng(0)
    host = {}
    for name, s in abstract_batch_tree.items():
        if name == "occupancy":
            grid = s.shape[-1]
            c = (np.arange(grid) + 0.5) / grid * 2 - 1
            r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
            occ = np.zeros(grid ** 3, np.uint8)
            occ[np.argsort(np.abs(r - 0.6), axis=None)[:args.anchors]] = 1
            host[name] = np.broadcast_to(occ.reshape(grid, grid, grid), s.shape).copy()
        elif s.dtype == jnp.bool_:
            host[name] = np.ones(s.shape, bool)
        elif name.endswith("_c2w"):  # orbits around the object, as tools/bench/train.py
            views = s.shape[-3]
            azimuth = np.arange(views) * 360.0 / views + (0.0 if name.startswith("input") else 17.0)
            elevation = np.full(views, 20.0 if name.startswith("input") else 15.0)
            c2w = np.asarray(geometry.spherical_c2w(azimuth, elevation, np.full(views, 1.6)), np.float32)
            host[name] = np.broadcast_to(c2w, s.shape).copy()
        elif name.endswith("_K"):
            host[name] = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(49.1), np.float32), s.shape).copy()
        else:
            host[name] = rng.uniform(size=s.shape).astype(np.float32)
    batch = jax.device_put(host, sharding.batch_sharding(mesh, 2))
    size = max(16, args.render_size)
    lpips = jax.device_put(LPIPS().init(jax.random.PRNGKey(1), jnp.zeros((1, size, size, 3)),
                                        jnp.zeros((1, size, size, 3))), sharding.replicated(mesh))
    state = jax.jit(create, out_shardings=state_shardings)(jax.random.PRNGKey(0))
    state, metrics = compiled(state, batch, lpips)  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.run_steps):
        state, metrics = compiled(state, batch, lpips)
    jax.block_until_ready(metrics)
    elapsed = (time.perf_counter() - t0) / args.run_steps
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in mesh.devices.flat]
    return {"measured_step_s": elapsed, "measured_peak_gib": max(peaks) / 2**30, "loss": float(metrics["loss"])}


# ---------------------------------------------------------------------------------------------------------
# Prediction and report


def predict(row, base, args):
    """Step time, memory and efficiency of one compiled mesh under the link assumptions in `args`."""
    granule = args.granule
    summary = summarize_collectives(row["collectives"], granule)
    fast_s = summary["fast_bytes"] / (args.fast_gbps * 1e9) + summary["fast_ops"] * args.fast_latency_us * 1e-6
    slow_s = summary["slow_bytes"] / (args.slow_gbps * 1e9) + summary["slow_ops"] * args.slow_latency_us * 1e-6
    comm_s = fast_s + slow_s
    serial = args.step_s + comm_s
    overlapped = max(args.step_s, comm_s)
    gib = 2**30
    if row.get("device_kind", "cpu").lower().startswith("cpu"):
        memory = args.base_gib + (row["device_bytes"] - base["device_bytes"]) / gib if base else None
    else:  # compiled for the GPU itself
        memory = row["device_bytes"] / gib
    return dict(summary, comm_s=comm_s, fast_s=fast_s, slow_s=slow_s, step_serial_s=serial,
                step_overlap_s=overlapped, efficiency_serial=args.step_s / serial,
                efficiency_overlap=args.step_s / overlapped, cpu_device_gib=row["device_bytes"] / gib,
                gpu_gib=memory, objects_per_s=row["devices"] / serial)


def markdown(rows, args) -> str:
    measured = any("measured_step_s" in r for r in rows)
    extra = " measured s | measured peak GiB |" if measured else ""
    lines = [
        "| devices | mesh dcn×data×fsdp | GPU GiB (est.) | compiled GiB | collectives/step | fast GB | slow GB "
        "| comm s | step s (serial) | eff. serial | step s (overlap) | eff. overlap |" + extra,
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if measured else ""),
    ]
    for r in rows:
        p = r["prediction"]
        gpu = "n/a" if p["gpu_gib"] is None else f"{p['gpu_gib']:.2f}"
        line = (f"| {r['devices']} | {r['dcn']}×{r['data']}×{r['fsdp']} | {gpu} | {p['cpu_device_gib']:.2f} "
                f"| {p['fast_ops'] + p['slow_ops']} | {p['fast_bytes'] / 1e9:.2f} | {p['slow_bytes'] / 1e9:.2f} "
                f"| {p['comm_s']:.3f} | {p['step_serial_s']:.3f} | {p['efficiency_serial']:.0%} "
                f"| {p['step_overlap_s']:.3f} | {p['efficiency_overlap']:.0%} |")
        if measured:
            m = r.get("measured_step_s")
            line += (f" {m:.3f} | {r['measured_peak_gib']:.2f} |" if m is not None else " n/a | n/a |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_json(path: str, data) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def run_child(args, mesh_text: str) -> dict:
    num = parse_mesh(mesh_text)[0]
    env = dict(os.environ)
    if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num}").strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    given = [a for a in (sys.argv[1:] if args.argv is None else args.argv)]
    command = [sys.executable, os.path.abspath(__file__), *given, "--child", mesh_text]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(proc, mesh_text: str):
    out, err = proc.communicate()
    row = next((json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")), None)
    if row is None:
        print(f"mesh {mesh_text}: failed (exit {proc.returncode})\n{(out + err)[-3000:]}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=",".join(DEFAULT_MESHES),
                        help="comma-separated DEVICES:DCNxDATAxFSDP; include 1:1x1x1 for the memory baseline")
    parser.add_argument("--granule", type=int, default=8, help="devices per host / slice (fast links inside)")
    parser.add_argument("--input-views", type=int, default=7)
    parser.add_argument("--input-size", type=int, default=448)
    parser.add_argument("--target-views", type=int, default=8)
    parser.add_argument("--render-size", type=int, default=448)
    parser.add_argument("--anchors", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=0, help="reconstruction layers (0 = the config's 16)")
    parser.add_argument("--step-s", type=float, default=0.374,
                        help="measured single-GPU micro-step, one object (H100, remat on: docs/training.md)")
    parser.add_argument("--base-gib", type=float, default=17.28,
                        help="measured single-GPU memory of that step (XLA analysis, H100, remat on)")
    parser.add_argument("--fast-gbps", type=float, default=360.0,
                        help="per-device bus bandwidth inside a granule, GB/s (NVLink 4: 450/direction, ~80%%)")
    parser.add_argument("--slow-gbps", type=float, default=40.0,
                        help="per-device bandwidth across granules, GB/s (400 Gb/s InfiniBand per GPU, ~80%%)")
    parser.add_argument("--fast-latency-us", type=float, default=10.0)
    parser.add_argument("--slow-latency-us", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=1, help="meshes compiled at the same time")
    parser.add_argument("--rows", help="re-predict from a previous --json instead of compiling")
    parser.add_argument("--json", help="write rows (compiled facts + predictions) here")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--batch-local", action="store_true",
                        help="compile with mesh.batch_local_loss=True (the loss under shard_map per device)")
    parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: virtual CPU devices (any count); gpu: this host's GPUs (meshes up to their count)")
    parser.add_argument("--run-steps", type=int, default=0,
                        help="with --platform gpu: also run and time the compiled step (validates the model)")
    parser.add_argument("--dump-hlo", help="write each mesh's optimized HLO text into this directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.child:
        print("ROW " + json.dumps(compile_mesh(args, args.child)), flush=True)
        return 0
    if args.rows:
        with open(args.rows) as f:
            rows = [r for r in json.load(f)["rows"]]
    else:
        meshes = args.meshes.split(",")
        for m in meshes:
            parse_mesh(m)
        rows, pending, running = [], list(meshes), []
        while pending or running:
            while pending and len(running) < max(1, args.jobs):
                mesh_text = pending.pop(0)
                running.append((mesh_text, run_child(args, mesh_text)))
            done_mesh, proc = running.pop(0)
            row = collect(proc, done_mesh)
            if row is not None:
                rows.append(row)
                print(f"compiled {done_mesh} in {row['compile_s']:.0f} s: "
                      f"{row['device_bytes'] / 2**30:.2f} GiB/device, {len(row['collectives'])} collectives",
                      flush=True)
                if args.json:  # so far, so that an interrupted run keeps what it compiled (--rows reads it)
                    write_json(args.json, {"assumptions": None, "rows": rows})
    base = next((r for r in rows if r["devices"] == 1), None)
    for r in rows:
        r["prediction"] = predict(r, base, args)
    table = markdown(rows, args)
    print(table)
    assumptions = {k: getattr(args, k) for k in ("granule", "step_s", "base_gib", "fast_gbps", "slow_gbps",
                                                 "fast_latency_us", "slow_latency_us", "input_views",
                                                 "input_size", "target_views", "render_size", "anchors")}
    if args.json:
        write_json(args.json, {"assumptions": assumptions, "rows": rows})
    if args.markdown:
        with open(args.markdown + ".tmp", "w") as f:
            f.write(table)
        os.replace(args.markdown + ".tmp", args.markdown)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
