"""Paper stage 2: train the reconstruction network with the proposal frozen — lr 1e-4, warmup 12k, 100k steps,
clip 4.0, gradient accumulation 8.

geolrm-jax train --config=configs/stage2.py --workdir=runs/stage2 --config.data.data_dir=<built dataset> \
    --config.init_from=runs/stage1 --config.loss.lpips_weights=<geolrm-jax lpips-weights output>
Anchors come from the ground-truth occupancy (stage2.anchors="ground_truth", default) or from the frozen
proposal network (stage2.anchors="proposal").
"""
import ml_collections

from geolrm_jax.data.pipeline import default_data_config
from geolrm_jax.model.config import official_model_config
from geolrm_jax.train.defaults import base_train_config


def get_config() -> ml_collections.ConfigDict:
    c = base_train_config()
    c.stage = 2
    c.batch_size = 8                  # global objects per micro-batch
    c.grad_accum_steps = 8
    c.num_train_steps = 100_000
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 12_000
    c.optim.grad_clip = 4.0
    c.optim.frozen = ("proposal",)
    c.init_from = ""                  # stage-1 workdir (or a `geolrm-jax convert` output)
    c.init_subtrees = ("proposal",)
    c.model = official_model_config()
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.scan_unroll = 1           # layer loop as a scan (what the training benchmarks measured)
    c.model.attention_over_heads = False  # the original's bf16 (flash-attention) path, used in its training
    c.data = default_data_config()
    c.stage2 = ml_collections.ConfigDict(dict(anchors="ground_truth", num_anchors=c.model.proposal.capacity,
                                              render_capacity=0))  # 0 = renderer default
    # Original weights: MSE on [-1, 1] images + 2·LPIPS + mask MSE + 0.2·depth + 0.05·depth TV.
    c.loss = ml_collections.ConfigDict(dict(mse=1.0, lpips=2.0, mask=1.0, depth=0.2, depth_tv=0.05,
                                            lpips_weights=""))
    c.checkpoint.best_metric = "loss"
    c.image_every_steps = 1000
    return c
