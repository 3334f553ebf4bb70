"""Chamfer distance and F-score of the exported mesh vs the true surface, beside the Gaussians' own, on held-out
procedural objects (``geolrm_jax.data.synthetic``: exact depth by analytic ray casting).

    python tools/mesh_metrics.py --source surface --objects 8 --out mesh_metrics.json     # the mesh path alone
    python tools/mesh_metrics.py --source model --checkpoint CKPT --image-size 256 --objects 8

Per object (seed ``--seed``, which the training sets do not use by default: they draw from seeds 0..):

* ground truth: the z-depth of the object's 40 GObjaverse-layout views (``synthetic.gobjaverse_layout``) at
  ``--gt-size`` px, unprojected (``geometry_metrics.depth_to_points``);
* Gaussians: ``surface`` = flat Gaussians on the true surface with its colours (``mesh.surface_gaussians``,
  from depth/normal/colour renders of 48 other views): measures what TSDF meshing loses on ideal Gaussians;
  ``model`` = the model's prediction from the object's 6 Zero123++-layout views (white background);
* Gaussians' score: the protocol of ``geometry_metrics`` (their means, opacity >= 0.05); mesh score: the same
  with ``--num-points`` points sampled uniformly on the mesh surface instead of the means. F-score at the
  protocol's threshold 0.2 and at 0.05 (in the protocol's x2 units).

Writes one JSON (per-object and mean scores, settings) and prints a table. Random weights give meaningless
numbers; this tool refuses to run ``--source model`` without a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

TIGHT = 0.05  # a second F-score threshold: at the protocol's 0.2, every reasonable surface scores ~1


def true_points(prims, size: int, seed: int) -> np.ndarray:
    from geolrm_jax import geometry_metrics
    from geolrm_jax.data import synthetic

    c2w, K = synthetic.gobjaverse_layout(np.random.default_rng(seed))
    depth = np.stack([synthetic.render_view(prims, c, k, size, 1)[1] for c, k in zip(c2w, K, strict=True)])
    return geometry_metrics.depth_to_points(depth, c2w, K)


def oracle_gaussians(prims, size: int = 96, views: int = 48, max_count: int = 10000, seed: int = 0):
    """Flat Gaussians on the object's true surface, coloured as its renders."""
    from geolrm_jax import geometry_metrics, mesh
    from geolrm_jax.data import synthetic

    c2w, K = mesh.fusion_cameras(np.zeros(3), 0.87, views, synthetic.FOV_DEG)
    points, normals, colours = [], [], []
    for c, k in zip(c2w, K, strict=True):
        rgba, depth, normal = synthetic.render_view(prims, c, k, size, 1)
        valid = depth > 0
        points.append(geometry_metrics.depth_to_points(depth[None], c[None], k[None]))
        normals.append(normal[valid])
        colours.append(rgba[valid][:, :3] / 255.0)
    points, normals, colours = (np.concatenate(x) for x in (points, normals, colours))
    keep = np.random.default_rng(seed).choice(len(points), min(max_count, len(points)), replace=False)
    from scipy.spatial import cKDTree

    neighbours, _ = cKDTree(points[keep]).query(points[keep], k=5)
    spacing = 1.5 * float(np.median(neighbours[:, 1:]))  # discs overlap their neighbours
    return mesh.surface_gaussians(points[keep], normals[keep], colours[keep], spacing)


def model_gaussians(prims, checkpoint: str, model_config: str, image_size: int):
    import jax.numpy as jnp

    from geolrm_jax import export, geometry, inference, inputs
    from geolrm_jax.data import synthetic
    from geolrm_jax.model import convert

    path = inference.find_checkpoint(checkpoint)[0]
    if model_config is None:  # a checkpoint written by convert / tools/export_demo_model.py carries its config
        saved = path / convert.CONFIG_FILE
        config = convert.restore_config(path) if saved.exists() else convert.config_from_arg("official")
    else:
        config = convert.config_from_arg(model_config)
    model = inference.Reconstructor(config, inference.load_variables(path, config))
    cams = geometry.zero123pp_cameras()
    c2w, K = np.asarray(cams.c2w), np.asarray(cams.K)
    images = np.stack([inputs.composite_on_white(synthetic.render_view(prims, c, k, image_size, 2)[0] / 255.0)
                       for c, k in zip(c2w, K, strict=True)]).astype(np.float32)
    batch = (jnp.asarray(images)[None], jnp.asarray(c2w)[None], jnp.asarray(K)[None], jnp.ones((1, len(c2w)), bool))
    anchors, mask = model.propose(model.variables, *batch)
    return export.to_numpy_gaussians(model.reconstruct(model.variables, *batch, anchors, mask))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["surface", "model"], default="surface")
    parser.add_argument("--checkpoint", help="weights for --source model")
    parser.add_argument("--model-config", help="official | tiny | config.json (default: the checkpoint's own "
                        "geolrm_model_config.json, else official)")
    parser.add_argument("--image-size", type=int, default=448, help="model input size for --source model")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=900_000, help="first object's seed (held out: not 0..N)")
    parser.add_argument("--gt-size", type=int, default=96, help="ground-truth depth map size")
    parser.add_argument("--num-points", type=int, default=16384)
    parser.add_argument("--resolution", type=int, default=128, help="TSDF voxels along the longest side")
    parser.add_argument("--views", type=int, default=48, help="TSDF fusion views")
    parser.add_argument("--view-size", type=int, default=192, help="TSDF fusion render size")
    parser.add_argument("--out", default="mesh_metrics.json")
    args = parser.parse_args(argv)
    if args.source == "model" and not args.checkpoint:
        print("mesh_metrics: --source model needs --checkpoint (random weights give meaningless numbers)",
              file=sys.stderr)
        return 2
    from geolrm_jax import geometry_metrics as gm
    from geolrm_jax import mesh
    from geolrm_jax.data import synthetic

    settings = mesh.MeshSettings(resolution=args.resolution, num_views=args.views, image_size=args.view_size)
    rows = []
    for i in range(args.objects):
        seed = args.seed + i
        prims = synthetic.random_object(np.random.default_rng(seed))
        start = time.perf_counter()
        gt = true_points(prims, args.gt_size, seed)
        if args.source == "surface":
            g = oracle_gaussians(prims, seed=seed)
        else:
            g = model_gaussians(prims, args.checkpoint, args.model_config, args.image_size)
        pred = gm.gaussian_points(g.means, g.opacities)
        gt_sub = gm.subsample(gt, args.num_points, seed + 1) * gm.DEFAULT_SCALE
        pred_sub = gm.subsample(pred, args.num_points, seed) * gm.DEFAULT_SCALE
        m = mesh.gaussians_to_mesh(g, settings)
        surface = np.asarray(m.sample(args.num_points, seed=seed)) * gm.DEFAULT_SCALE
        row = {"seed": seed, "primitives": len(prims), "gaussians": int(len(g.means)), "mesh_faces": len(m.faces)}
        for name, points in (("gaussians", pred_sub), ("mesh", surface)):
            scores = gm.chamfer_fscore(points, gt_sub)
            row[f"{name}_chamfer"], row[f"{name}_fscore"] = scores.chamfer, scores.fscore
            row[f"{name}_fscore_{TIGHT}"] = gm.chamfer_fscore(points, gt_sub, TIGHT).fscore
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"object {seed}: Gaussians CD {row['gaussians_chamfer']:.4f} F {row['gaussians_fscore']:.3f} "
              f"F@{TIGHT} {row[f'gaussians_fscore_{TIGHT}']:.3f} | mesh CD {row['mesh_chamfer']:.4f} "
              f"F {row['mesh_fscore']:.3f} F@{TIGHT} {row[f'mesh_fscore_{TIGHT}']:.3f} ({row['mesh_faces']} faces, "
              f"{row['seconds']:.0f} s)", flush=True)
    keys = [f"{n}_{k}" for n in ("gaussians", "mesh") for k in ("chamfer", "fscore", f"fscore_{TIGHT}")]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    result = {"source": args.source, "checkpoint": args.checkpoint, "objects": rows, "mean": mean,
              "settings": {**vars(args), "mesh": dataclasses.asdict(settings)}}
    tmp = f"{args.out}.partial"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
