"""Package a trained demo model: the latest checkpoint of a training workdir -> an inference checkpoint
(``geolrm-jax convert`` format: Orbax variables with 16-bit parameters + ``geolrm_model_config.json``) and a
``training.json`` describing how it was trained.

    python tools/export_demo_model.py runs/demo2 --out geolrm_jax/assets/checkpoints/demo \
        --training-log docs/demo_training.json

Parameters are stored in bfloat16 (the checkpoint stays under 25 MB); BatchNorm statistics in float32. The
config is the workdir's model config (``configs/demo.py``).
"""
import argparse
import json
import os
import shutil
import tempfile

import jax
import numpy as np


def latest_variables(workdir: str):
    import orbax.checkpoint as ocp

    from geolrm_jax.train import checkpointing

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step()
    if step is None:
        raise SystemExit(f"{workdir}: no checkpoint")
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}, int(step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/demo.py:2", help="the training config (for the model part)")
    parser.add_argument("--training-log", default="", help="JSON written by the training runs (copied beside)")
    args = parser.parse_args(argv)

    from geolrm_jax.model import convert
    from geolrm_jax.train.defaults import config_from_file

    config = config_from_file(args.config).model
    variables, step = latest_variables(args.workdir)
    import jax.numpy as jnp

    variables = {"params": jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), variables["params"]),
                 "batch_stats": jax.tree.map(lambda x: np.asarray(x, np.float32), variables["batch_stats"])}
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        convert.save_variables(os.path.join(tmp, "model"), variables)
        model_dir = os.path.join(tmp, "model")
        with open(os.path.join(model_dir, convert.CONFIG_FILE), "w") as f:
            f.write(config.to_json(indent=1))
        info = {"workdir_step": step, "config": args.config}
        if args.training_log:
            with open(args.training_log) as f:
                info["training"] = json.load(f)
        with open(os.path.join(model_dir, "training.json"), "w") as f:
            json.dump(info, f, indent=1)
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        os.replace(model_dir, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"wrote {args.out} (step {step}, {size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
