"""Expand an ml_collections sweep (a config file with get_config() and get_sweep()) into training runs.

    python tools/launch_sweep.py configs/sweep_lr_points.py --workdir=runs/sweep [--launch] [-- extra flags]

Each point of the Cartesian product of `get_sweep().axes` becomes one command
`geolrm-jax train --config=<file> --workdir=<workdir>/<run name> --config.<field>=<value> ...`; the commands
are printed, or run one after another with --launch (the exit code is that of the first failing run).
Extra arguments after `--` are appended to every command (e.g. --config.data.data_dir=...).
"""
import argparse
import importlib.util
import itertools
import shlex
import subprocess
import sys


def load_sweep(config_path: str):
    spec = importlib.util.spec_from_file_location("sweep_config", config_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"launch_sweep: cannot load {config_path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SystemExit(f"launch_sweep: {config_path} has no get_sweep()")
    base = module.get_config()
    axes = {field: tuple(values) for field, values in module.get_sweep().axes}
    for field in axes:
        node = base
        for part in field.split("."):
            if part not in node:
                raise SystemExit(f"launch_sweep: sweep field {field!r} is not in the config of {config_path}")
            node = node[part]
    return axes


def format_value(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def expand(config_path: str, workdir: str, extra=()):
    """[(run_name, argv)] for every point of the sweep."""
    axes = load_sweep(config_path)
    fields = list(axes)
    runs = []
    for values in itertools.product(*(axes[f] for f in fields)):
        name = "_".join(f"{f.split('.')[-1]}-{format_value(v)}" for f, v in zip(fields, values, strict=True))
        argv = ["geolrm-jax", "train", f"--config={config_path}", f"--workdir={workdir}/{name}"]
        argv += [f"--config.{f}={format_value(v)}" for f, v in zip(fields, values, strict=True)]
        runs.append((name, argv + list(extra)))
    return runs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sweep config file with get_config() and get_sweep()")
    parser.add_argument("--workdir", required=True, help="parent directory; each run gets a subdirectory")
    parser.add_argument("--launch", action="store_true", help="run the commands one after another")
    args = parser.parse_args(argv)
    runs = expand(args.config, args.workdir, extra)
    for name, command in runs:
        print(shlex.join(command), flush=True)
        if args.launch:
            code = subprocess.call(command)
            if code:
                print(f"launch_sweep: run {name} failed with exit code {code}", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
