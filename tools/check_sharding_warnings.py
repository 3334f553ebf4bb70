"""Count XLA's "Involuntary full rematerialization" warnings when the tiny GeoLRM trains on a device mesh.

The SPMD partitioner prints that warning (C++ stderr) where it can only reshard a tensor by replicating it
first. This tool trains `configs/train_tiny.py` for a few steps on an 8-object synthetic set, on a (data, fsdp)
mesh of virtual CPU devices, in a child process, and reports the warnings by the op they name.

    python tools/check_sharding_warnings.py --stage 2 --mesh 2,4 [--max-warnings N]

Exits 1 if there are more than --max-warnings (default: no limit, report only).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

WARNING = "Involuntary full rematerialization"
CHILD = r"""
import sys
from geolrm_jax.data.gobjaverse import build_synthetic
from geolrm_jax.train.defaults import config_from_file
from geolrm_jax.train.trainer import train_and_evaluate
stage, data, fsdp, work, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
config = config_from_file(sys.argv[6] + ":" + stage)
config.data.data_dir = build_synthetic(work + "/data", num_objects=8, image_size=32, grid_size=8,
                                       validation_objects=0, supersample=1)
config.mesh.data, config.mesh.fsdp, config.mesh.num_devices = data, fsdp, data * fsdp
config.batch_size, config.num_train_steps = data * fsdp, steps
config.log_every_steps, config.image_every_steps, config.checkpoint.every_steps = 1, 0, steps
result = train_and_evaluate(config, work + "/run")
print("losses", [float(m["loss"]) for _, m in result["history"]])
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("1", "2"), default="2")
    parser.add_argument("--mesh", default="2,4", help="data,fsdp sizes")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-warnings", type=int, default=None)
    args = parser.parse_args(argv)
    data, fsdp = (int(n) for n in args.mesh.split(","))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={data * fsdp}",
           "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run([sys.executable, "-c", CHILD, args.stage, str(data), str(fsdp), work, str(args.steps),
                               os.path.join(repo, "configs", "train_tiny.py")],
                              capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"check_sharding_warnings: training failed (exit {proc.returncode})")
    lines = [line for line in proc.stderr.splitlines() if WARNING in line]
    ops = collections.Counter(m.group(1) if (m := re.search(r'op_name="([^"]+)"', line)) else "?" for line in lines)
    print(next((line for line in proc.stdout.splitlines() if line.startswith("losses")), "losses ?"))
    print(f"stage {args.stage}, mesh data={data} x fsdp={fsdp}: {len(lines)} '{WARNING}' warnings")
    for op, count in ops.most_common():
        print(f"  {count:3d}  {op}")
    if args.max_warnings is not None and len(lines) > args.max_warnings:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
