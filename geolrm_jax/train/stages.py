"""The two training stages of GeoLRM as tasks for the Trainer (trainer.py).

A task provides init_variables(rng, batch), loss_fn(params, batch_stats, batch, rng) and
summary_images(params, batch_stats, batch, rng) on one micro-batch of the data pipeline's dict (see
geolrm_jax/data/pipeline.py). Both stages initialize the FULL model (proposal and reconstruction subtrees), so
every checkpoint holds a complete GeoLRM; the subtree a stage does not train is listed in optim.frozen.

Stage 1 (proposal network): occupancy logits from the input views; loss = bce_weight·BCE-with-logits +
  affinity_weight·scene-class affinity (precision, recall, specificity terms); metrics IoU/precision/recall.
Stage 2 (reconstruction network, proposal frozen): anchors are the occupied voxels of the ground-truth
  occupancy (a random subset of `num_anchors` when more are occupied, like the original's random choice), or
  with stage2.anchors = "proposal" those of the frozen proposal network; the Gaussians are rendered into the
  target views and scored with losses.render_losses (terms logged as loss_<term>; its LPIPS term is also
  the `lpips` metric, 0 when the LPIPS weight is 0); metrics PSNR/SSIM/LPIPS and the renderer's overflow.
"""
import jax
import jax.numpy as jnp

from geolrm_jax.model.geolrm import GeoLRM
from geolrm_jax.model.proposal import select_anchors
from geolrm_jax.render.splat import render
from geolrm_jax.train import losses, metrics


def _inputs(batch):
    return batch["input_images"], batch["input_c2w"], batch["input_K"], batch["input_mask"]


def ground_truth_anchors(occupancy, capacity: int, xyz_scale: float, rng):
    """occupancy (B, G, G, G) → anchors (B, capacity, 3), mask (B, capacity): occupied voxel centres; a
    uniformly random subset of them when more than `capacity` are occupied."""
    noise = jax.random.uniform(rng, occupancy.shape, jnp.float32, 0.5, 1.0)
    scores = jnp.where(occupancy > 0, noise, -1.0)
    return select_anchors(scores, capacity, xyz_scale)


class _Task:
    def __init__(self, config):
        self.config = config
        self.model = GeoLRM(config.model)

    def variables(self, params, batch_stats):
        return {"params": params, "batch_stats": batch_stats}

    def init_variables(self, rng, batch):
        return self.model.init(rng, *_inputs(batch))


class Stage1Task(_Task):
    """Proposal network: occupancy from images."""

    def loss_fn(self, params, batch_stats, batch, rng):
        del rng
        logits = self.model.apply(self.variables(params, batch_stats), *_inputs(batch), method=GeoLRM.propose)
        target = batch["occupancy"].astype(jnp.float32)
        weights = self.config.loss
        bce = losses.bce_occupancy(logits, target)
        affinity = losses.scene_class_affinity_loss(logits, target)
        loss = weights.bce * bce + weights.affinity * affinity
        occupancy = metrics.occupancy_metrics(logits, target)
        values = {"bce": bce, "affinity": affinity,
                  **{k: occupancy[k] for k in ("iou", "precision", "recall")}}
        return loss, (values, batch_stats, None)

    def summary_images(self, params, batch_stats, batch, rng):
        """Input views and max-projections (along z) of predicted vs target occupancy, first example."""
        logits = self.model.apply(self.variables(params, batch_stats), *_inputs(batch), method=GeoLRM.propose)
        pred = jax.nn.sigmoid(logits[0]).max(axis=-1)
        target = batch["occupancy"][0].astype(jnp.float32).max(axis=-1)
        as_rgb = lambda x: jnp.repeat(x[..., None], 3, -1)
        return {"inputs": batch["input_images"][0], "occupancy_pred_target": jnp.stack([as_rgb(pred),
                                                                                        as_rgb(target)])}


class Stage2Task(_Task):
    """Reconstruction network on anchors; proposal frozen."""

    def __init__(self, config, lpips_params=None):
        super().__init__(config)
        if config.stage2.anchors not in ("ground_truth", "proposal"):
            raise ValueError(f"stage2.anchors must be 'ground_truth' or 'proposal', got {config.stage2.anchors!r}")
        self.lpips_params = lpips_params

    def anchors(self, params, batch_stats, batch, rng):
        pc = self.config.model.proposal
        capacity = self.config.stage2.num_anchors
        if self.config.stage2.anchors == "ground_truth":
            return ground_truth_anchors(batch["occupancy"], capacity, pc.xyz_scale, rng)
        frozen = jax.lax.stop_gradient(params)
        logits = self.model.apply(self.variables(frozen, batch_stats), *_inputs(batch), method=GeoLRM.propose)
        return select_anchors(logits, capacity, pc.xyz_scale)

    def render(self, params, batch_stats, batch, rng):
        params = {**params, "proposal": jax.lax.stop_gradient(params["proposal"])}
        anchors, anchor_mask = self.anchors(params, batch_stats, batch, rng)
        gaussians = self.model.apply(self.variables(params, batch_stats), *_inputs(batch), anchors, anchor_mask,
                                     method=GeoLRM.reconstruct)
        h, w = batch["target_images"].shape[2:4]
        return render(gaussians, batch["target_c2w"], batch["target_K"], h, w, batch["background"],
                      capacity=self.config.stage2.render_capacity or None)

    def loss_fn(self, params, batch_stats, batch, rng):
        out = self.render(params, batch_stats, batch, rng)
        w = self.config.loss
        weights = losses.RenderLossWeights(mse=w.mse, lpips=w.lpips, mask=w.mask, depth=w.depth,
                                           depth_tv=w.depth_tv)
        terms = losses.render_losses(
            out.rgb, out.alpha, out.depth, batch["target_images"], batch["target_alpha"], batch["target_depth"],
            batch["target_mask"], self.lpips_params, weights=weights)
        loss = terms.pop("total")
        image = metrics.image_metrics(jax.lax.stop_gradient(out.rgb), batch["target_images"],
                                      batch["target_mask"])
        values = {f"loss_{k}": v for k, v in terms.items()}  # (clu reserves the output name "mask")
        values.update(psnr=image["psnr"], ssim=image["ssim"], lpips=terms["lpips"],
                      render_overflow=out.overflow.astype(jnp.float32))
        return loss, (values, batch_stats, None)

    def summary_images(self, params, batch_stats, batch, rng):
        out = self.render(params, batch_stats, batch, rng)
        return {"inputs": batch["input_images"][0], "targets": batch["target_images"][0], "renders": out.rgb[0]}


def build_task(config):
    if config.stage == 1:
        return Stage1Task(config)
    if config.stage == 2:
        lpips_params = None
        if config.loss.lpips > 0:
            from geolrm_jax.train.lpips import load_lpips_params

            if not config.loss.lpips_weights:
                raise ValueError("loss.lpips > 0 needs loss.lpips_weights (see geolrm-jax lpips-weights)")
            lpips_params = load_lpips_params(config.loss.lpips_weights)
        return Stage2Task(config, lpips_params)
    raise ValueError(f"config.stage must be 1 or 2, got {config.stage!r}")
