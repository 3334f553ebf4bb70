"""Hyperparameter sweeps: a config file's `get_hyper(hyper)` expanded into `geolrm-jax train` runs.

    geolrm-jax sweep configs/sweep_anchors_lr.py --workdir=runs/sweep                    # dry run: print
    geolrm-jax sweep configs/sweep_anchors_lr.py --workdir=runs/sweep --launch --devices=0,1,2,3 \\
        --devices-per-run=2 -- --config.data.data_dir=$DATA                               # 2 runs at a time

A sweep config file has `get_config()` (the base config) and `get_hyper(hyper)`, in the manner of scenic:
`hyper.sweep(field, values)` is one axis, `hyper.fixed(field, value)` a constant, `hyper.product([...])` the
Cartesian product of its parts, `hyper.zipit([...])` their element-wise pairing (equal lengths) and
`hyper.chainit([...])` their concatenation; each returns a list of {field: value} points. Fields are paths
into the config (a leading "config." is allowed).

Values are typed: each is checked against the base config's field (str, bool, int, float — ints are accepted
for floats — or tuple) before anything runs and written as the override ml_collections parses back to the
same value (strings unquoted, `--config.stage2.anchors=proposal`). Every point becomes
`<command> --config=<file> --workdir=<workdir>/<run name> --config.<field>=<value> ... <extra>`; a run
whose workdir holds a checkpoint resumes. With --launch, runs start as slots free up: `--parallel` slots, or
one slot per group of `--devices-per-run` ids of `--devices`, passed to the run as `--device-env`
(CUDA_VISIBLE_DEVICES by default); each run's output goes to <workdir>/<run name>.log.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types

# ---------------------------------------------------------------------------------------------------------
# scenic-style sweep algebra


def _field(name: str) -> str:
    return name[len("config."):] if name.startswith("config.") else name


def sweep(field: str, values) -> list[dict]:
    """One axis: [{field: v} for v in values]."""
    return [{_field(field): v} for v in values]


def fixed(field: str, value, length: int = 1) -> list[dict]:
    """A constant (repeated `length` times, for zipit)."""
    return [{_field(field): value}] * length


def product(parts) -> list[dict]:
    """Cartesian product of the parts (the last part varies fastest)."""
    points = [{}]
    for part in parts:
        points = [_merge(a, b) for a, b in itertools.product(points, part)]
    return points


def zipit(parts) -> list[dict]:
    """Element-wise union of parts of equal length."""
    parts = [list(p) for p in parts]
    lengths = {len(p) for p in parts}
    if len(lengths) > 1:
        raise ValueError(f"zipit: parts have different lengths {sorted(lengths)}")
    return [_merge_all(points) for points in zip(*parts, strict=True)]


def chainit(parts) -> list[dict]:
    """Concatenation of the parts."""
    return [dict(p) for part in parts for p in part]


def _merge(a: dict, b: dict) -> dict:
    shared = set(a) & set(b)
    if shared:
        raise ValueError(f"sweep field(s) {sorted(shared)} set twice in one point")
    return {**a, **b}


def _merge_all(points) -> dict:
    out = {}
    for p in points:
        out = _merge(out, p)
    return out


HYPER = types.SimpleNamespace(sweep=sweep, fixed=fixed, product=product, zipit=zipit, chainit=chainit)


# ---------------------------------------------------------------------------------------------------------
# Expansion into commands


class SweepError(ValueError):
    """A sweep config that cannot be expanded (one line naming the file and field)."""


def load_sweep(config_path: str):
    """(base config, [point dicts]) of a sweep config file."""
    spec = importlib.util.spec_from_file_location("sweep_config", config_path)
    if spec is None or spec.loader is None or not os.path.isfile(config_path):
        raise SweepError(f"{config_path}: cannot load the sweep config")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "get_hyper"):
        points = list(module.get_hyper(HYPER))
    elif hasattr(module, "get_sweep"):  # older form: a product of (field, values) axes
        points = product([sweep(f, v) for f, v in module.get_sweep().axes])
    else:
        raise SweepError(f"{config_path}: no get_hyper(hyper)")
    if not points:
        raise SweepError(f"{config_path}: get_hyper returned no points")
    return module.get_config(), points


def _lookup(config, field: str, source: str):
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise SweepError(f"{source}: sweep field {field!r} is not in the base config")
        node = node[part]
    return node


def format_value(value, current, field: str = "", source: str = "") -> str:
    """The --config.<field>= text that ml_collections parses back to `value`, checked against the base
    config's value `current` (its type)."""
    where = f"{source}: {field}"
    if current is None and not isinstance(value, str):
        raise SweepError(f"{where}: only string values can override a field that is None in the base config")
    if isinstance(current, bool) or isinstance(value, bool):
        if not (isinstance(current, bool) and isinstance(value, bool)):
            raise SweepError(f"{where}: {value!r} and the base value {current!r} must both be booleans")
        return "true" if value else "false"
    if isinstance(current, str) or current is None:
        if not isinstance(value, str):
            raise SweepError(f"{where}: expects a string, got {value!r}")
        return value
    if isinstance(current, int):
        if not isinstance(value, int):
            raise SweepError(f"{where}: expects an int, got {value!r}")
        return str(value)
    if isinstance(current, float):
        if not isinstance(value, int | float):
            raise SweepError(f"{where}: expects a float, got {value!r}")
        return repr(float(value))
    if isinstance(current, tuple):
        if not isinstance(value, tuple | list):
            raise SweepError(f"{where}: expects a tuple, got {value!r}")
        return repr(tuple(value))
    raise SweepError(f"{where}: fields of type {type(current).__name__} cannot be swept")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", text).strip("-") or "x"


def expand(config_path: str, workdir: str, extra=(), command=("geolrm-jax", "train")):
    """[(run name, argv)] for every point of the sweep (the order of get_hyper)."""
    base, points = load_sweep(config_path)
    runs, names = [], set()
    for point in points:
        overrides, parts = [], []
        for field, value in point.items():
            text = format_value(value, _lookup(base, field, config_path), field, config_path)
            overrides.append(f"--config.{field}={text}")
            parts.append(f"{field.split('.')[-1]}-{_slug(text)}")
        name = "_".join(parts) or "base"
        if name in names:
            name = f"{name}_{len(runs)}"
        names.add(name)
        argv = [*command, f"--config={config_path}", f"--workdir={os.path.join(workdir, name)}"]
        runs.append((name, argv + overrides + list(extra)))
    return runs


# ---------------------------------------------------------------------------------------------------------
# Launching


def device_slots(devices: str, devices_per_run: int, parallel: int):
    """[device-id string or None] per slot: groups of `devices_per_run` of `devices`, else `parallel` slots
    without a device restriction."""
    if devices:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        if devices_per_run < 1 or len(ids) < devices_per_run:
            raise SweepError(f"--devices-per-run={devices_per_run} does not fit the devices {ids}")
        groups = [",".join(ids[i:i + devices_per_run]) for i in range(0, len(ids) - devices_per_run + 1,
                                                                         devices_per_run)]
        return groups[:parallel] if parallel > 0 else groups
    return [None] * max(1, parallel)


def launch(runs, workdir: str, slots, device_env: str = "CUDA_VISIBLE_DEVICES", poll_s: float = 0.2):
    """Run `runs` with at most len(slots) at a time; returns {run name: exit code}."""
    os.makedirs(workdir, exist_ok=True)
    pending, running, codes = list(runs), {}, {}
    free = list(range(len(slots)))
    try:
        while pending or running:
            while pending and free:
                slot = free.pop(0)
                name, argv = pending.pop(0)
                env = dict(os.environ)
                if slots[slot] is not None:
                    env[device_env] = slots[slot]
                log = open(os.path.join(workdir, f"{name}.log"), "ab")
                prefix = f"{device_env}={slots[slot]} " if slots[slot] is not None else ""
                print(f"[slot {slot}] {prefix}{shlex.join(argv)}", flush=True)
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[name] = (proc, slot, log)
            for name, (proc, slot, log) in list(running.items()):
                code = proc.poll()
                if code is not None:
                    log.close()
                    codes[name] = code
                    free.append(slot)
                    del running[name]
                    print(f"[slot {slot}] {name}: {'done' if code == 0 else f'failed (exit {code})'}", flush=True)
            if running:
                time.sleep(poll_s)
    finally:
        for proc, _, _log in running.values():  # interrupted: stop the runs we started
            proc.send_signal(signal.SIGTERM)
        for proc, _, log in running.values():
            proc.wait()
            log.close()
    return codes


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="geolrm-jax sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sweep config file with get_config() and get_hyper(hyper)")
    parser.add_argument("--workdir", required=True, help="parent directory; each run gets a subdirectory")
    parser.add_argument("--launch", action="store_true", help="run the commands (without it: a dry run)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="runs at a time (default: one per device group, else 1)")
    parser.add_argument("--devices", default="", help="device ids to share out, e.g. 0,1,2,3,4,5,6,7")
    parser.add_argument("--devices-per-run", type=int, default=1)
    parser.add_argument("--device-env", default="CUDA_VISIBLE_DEVICES",
                        help="environment variable that receives a run's device ids")
    parser.add_argument("--command", default="geolrm-jax train", help="what each run executes")
    args = parser.parse_args(argv)
    try:
        runs = expand(args.config, args.workdir, extra, shlex.split(args.command))
        slots = device_slots(args.devices, args.devices_per_run, args.parallel)
    except SweepError as err:
        print(f"geolrm-jax sweep: {err}", file=sys.stderr)
        return 2
    if not args.launch:
        for index, (_, command) in enumerate(runs):
            slot = slots[index % len(slots)]
            print((f"{args.device_env}={slot} " if slot is not None else "") + shlex.join(command))
        print(f"# {len(runs)} runs, {len(slots)} at a time (dry run: add --launch to start them)")
        return 0
    codes = launch(runs, args.workdir, slots, args.device_env)
    failed = {name: code for name, code in codes.items() if code}
    for name, code in failed.items():
        print(f"geolrm-jax sweep: run {name} failed with exit code {code} "
              f"(log: {os.path.join(args.workdir, name + '.log')})", file=sys.stderr)
    return next(iter(failed.values()), 0)


if __name__ == "__main__":
    sys.exit(main())
