"""The demo model: the GeoLRM architecture at ~8M parameters, trained on procedural objects rendered on the
accelerator (geolrm_jax/data/procedural.py), both stages. `configs/demo.py:1` is stage 1 (occupancy),
`configs/demo.py:2` stage 2 (rendering; init_from the stage-1 workdir).

geolrm-jax train --config=configs/demo.py:1 --workdir=runs/demo1
geolrm-jax train --config=configs/demo.py:2 --workdir=runs/demo2 --config.init_from=runs/demo1
geolrm-jax train --config=configs/demo.py:2,continue --workdir=runs/demo2b --config.init_from=demo_model
"""
import ml_collections

from geolrm_jax.data.procedural_pipeline import default_procedural_config
from geolrm_jax.model.config import demo_model_config
from geolrm_jax.train.defaults import base_train_config


def get_config(arg: str = "1") -> ml_collections.ConfigDict:
    """arg: "1" or "2"; "2,continue" initializes every subtree from init_from (a stage-2 run's workdir or an
    exported model) instead of only the proposal network."""
    stage, _, variant = arg.partition(",")
    if variant not in ("", "continue") or (variant and stage != "2"):
        raise ValueError(f"configs/demo.py: argument {arg!r} is not 1, 2 or 2,continue")
    c = base_train_config()
    c.stage = int(stage)
    c.seed = 0
    c.batch_size = 16
    c.num_train_steps = 20_000 if c.stage == 1 else 60_000
    c.log_every_steps = 50
    c.image_every_steps = 1000
    c.eval_every_steps = 1000
    c.num_eval_batches = 4
    c.mesh.min_fsdp_size = 2**20
    c.optim.lr = 4e-4
    c.optim.warmup_steps = 500
    c.optim.grad_clip = 10.0 if c.stage == 1 else 4.0
    c.optim.weight_decay = 0.05
    c.optim.frozen = ("reconstruction",) if c.stage == 1 else ("proposal",)
    c.model = demo_model_config()
    c.model.dtype = "bfloat16"
    c.model.remat = False
    c.data = default_procedural_config()
    c.data.input_size = c.model.input_size
    c.data.grid_size = c.model.proposal.grid_size
    c.checkpoint.every_steps = 500
    c.checkpoint.keep_last = 2
    c.checkpoint.best_metric = "loss"
    if c.stage == 1:
        c.loss = ml_collections.ConfigDict(dict(bce=1.0, affinity=1.0))
    else:
        c.init_subtrees = () if variant == "continue" else ("proposal",)
        c.stage2 = ml_collections.ConfigDict(dict(anchors="ground_truth", num_anchors=c.model.proposal.capacity,
                                                  render_capacity=0))
        c.loss = ml_collections.ConfigDict(dict(mse=1.0, lpips=0.0, mask=1.0, depth=0.2, depth_tv=0.05,
                                                lpips_weights=""))
    return c
