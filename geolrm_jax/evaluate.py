"""``geolrm-jax eval``: rendering quality (PSNR, SSIM, LPIPS) and geometry (Chamfer, F-score) over a split.

    geolrm-jax eval ROOT [--split validation] [--object-list ROOT/object_list.json] [--num-views 4 8 12 16 20]
                    [--method model visual_hull] [--checkpoint CKPT] [--model-config ...]
                    [--lpips-weights lpips.npz] [--out evals/]

ROOT holds objects in the GObjaverse layout that ``geolrm_jax.data`` builds datasets from (``<root>/<name>/
<view:05d>/<view:05d>.{png,json}`` and ``_nd.exr``; e.g. GSO renders, or ``geolrm-jax data synthetic``'s
output); the object list JSON (``{split: [names]}`` or a list) picks the split. Views 0..23 are the orbit.

Methods (``--method``, one or several): ``model`` (default), the reconstruction model; ``visual_hull``, the
non-learned baseline of ``geolrm_jax.visual_hull`` (space carving from the inputs' alpha masks on a
``--hull-grid``^3 grid, coloured from the input views), emitted as Gaussians and scored by the same code.

Protocol, per object, method and value N of ``--num-views``:

* inputs: N orbit views spread evenly, view ``floor(i * 24 / N)`` for i < N (N <= 24), composited on white
  and resized to ``--input-size`` (``gobjaverse_io.composite``: premultiplied-alpha bilinear, as the training
  pipeline composites its inputs and targets);
* held-out targets: the non-orbit views (24.. of the 40), or when an object has only orbit views, the orbit
  views not used as inputs; at most ``--max-targets`` of them, spread evenly; composited on white at
  ``--render-size``. The Gaussians are rendered there on white: PSNR and SSIM (``train.metrics``, per view,
  averaged) and LPIPS-VGG (with ``--lpips-weights`` from ``geolrm-jax lpips-weights``; without it LPIPS is not
  computed: a random VGG is no perceptual metric);
* geometry (``geolrm_jax.geometry_metrics``, whose docstring is the full protocol): Chamfer distance and
  F-score at 0.2 between the opacity-filtered Gaussian means and the ground-truth depth maps of the input and
  target views, unprojected at full resolution, with both sets scaled by 2 ([-0.5, 0.5]^3 -> [-1, 1]^3).

Writes ``metrics.csv`` (one row per object, method and N) and ``summary.csv`` (means per method, family and
N; the family is ``object.json``'s ``family`` field, as ``geolrm-jax data eval-set`` writes it; ``all`` pools
every object) into ``--out`` (each via a temporary file renamed into place; existing ones need ``--overwrite``
and must be this command's CSVs) and prints the summary table. Arguments, the object list, the weights'
location and the output are checked before the model is loaded. Weights are found as in
``geolrm-jax reconstruct``; with none, random weights run and the output says so.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable

import numpy as np

from geolrm_jax import geometry_metrics
from geolrm_jax.data.gobjaverse_io import NUM_ORBIT_VIEWS

METRICS = ("psnr", "ssim", "lpips", "chamfer", "fscore", "precision", "recall")
CSV_FIELDS = ("object_id", "family", "method", "num_views", *METRICS, "gaussians", "seconds")
SUMMARY_FIELDS = ("method", "family", "num_views", "objects", *METRICS)
METHODS = ("model", "visual_hull")


def input_view_ids(num_views: int, num_orbit: int = NUM_ORBIT_VIEWS) -> list[int]:
    """N orbit views spread evenly: floor(i * num_orbit / N)."""
    if not 1 <= num_views <= num_orbit:
        raise ValueError(f"--num-views must be in 1..{num_orbit}, got {num_views}")
    return [int(math.floor(i * num_orbit / num_views)) for i in range(num_views)]


def target_view_ids(inputs: list[int], num_object_views: int, max_targets: int,
                    num_orbit: int = NUM_ORBIT_VIEWS) -> list[int]:
    """Held-out views: the non-orbit ones, else the unused orbit ones; at most ``max_targets``, spread evenly."""
    pool = list(range(num_orbit, num_object_views)) or [v for v in range(num_orbit) if v not in inputs]
    if not pool:
        raise ValueError("no held-out view left to evaluate on")
    if len(pool) > max_targets:
        pool = [pool[int(i * len(pool) / max_targets)] for i in range(max_targets)]
    return pool


WHITE = np.ones(3, np.float32)


def count_views(object_dir: str) -> int:
    n = 0
    while os.path.exists(os.path.join(object_dir, f"{n:05d}", f"{n:05d}.png")):
        n += 1
    return n


# predict(images (V, S, S, 3) on white, c2w (V, 4, 4), K (V, 3, 3), alphas (V, S, S)) -> Gaussians of one
# scene, fields (1, N, ...). The model ignores the alphas (its inputs are composited on white); the visual hull
# carves with them.
Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], object]


def evaluate_object(object_dir: str, predict: Predictor, num_views: int, *, input_size: int, render_size: int,
                    max_targets: int = 8, lpips_params=None, num_points: int = geometry_metrics.DEFAULT_NUM_POINTS,
                    min_opacity: float = geometry_metrics.SURFACE_MIN_OPACITY) -> dict:
    """All metrics of one object with N = ``num_views`` inputs (see the module doc) -> a dict of floats."""
    import jax.numpy as jnp

    from geolrm_jax import inference
    from geolrm_jax.data import gobjaverse_io
    from geolrm_jax.train import metrics

    t0 = time.perf_counter()
    inputs = input_view_ids(num_views)
    targets = target_view_ids(inputs, count_views(object_dir), max_targets)
    views = {v: gobjaverse_io.read_view(object_dir, v) for v in sorted(set(inputs) | set(targets))}
    composited = [gobjaverse_io.composite(views[v].rgba, input_size, WHITE) for v in inputs]
    images, alphas = np.stack([c[0] for c in composited]), np.stack([c[1] for c in composited])
    gaussians = predict(images, np.stack([views[v].c2w for v in inputs]), np.stack([views[v].K for v in inputs]),
                        alphas)

    target_rgb = np.stack([gobjaverse_io.composite(views[v].rgba, render_size, WHITE)[0] for v in targets])
    t_c2w, t_K = np.stack([views[v].c2w for v in targets]), np.stack([views[v].K for v in targets])
    renders = inference.render_views(gaussians, t_c2w, t_K, render_size)
    pred, true = jnp.asarray(renders), jnp.asarray(target_rgb)
    row = {"psnr": float(jnp.mean(metrics.psnr(pred, true))), "ssim": float(jnp.mean(metrics.ssim(pred, true))),
           "lpips": float(jnp.mean(metrics.lpips(lpips_params, pred, true))) if lpips_params else float("nan")}

    all_views = list(views.values())
    means = np.asarray(gaussians.means).reshape(-1, 3)
    opacities = np.asarray(gaussians.opacities).reshape(-1)
    try:
        geo = geometry_metrics.gaussians_vs_depth(
            means, opacities, np.stack([v.depth for v in all_views]), np.stack([v.c2w for v in all_views]),
            np.stack([v.K for v in all_views]), np.stack([v.rgba[..., 3] / 255.0 for v in all_views]),
            num_points=num_points, min_opacity=min_opacity)
        row.update(geo._asdict())
    except ValueError as err:  # no Gaussian above the opacity threshold: geometry is undefined
        print(f"warning: {object_dir}: {err}; geometry metrics are NaN", file=sys.stderr)
        row.update(dict.fromkeys(("chamfer", "fscore", "precision", "recall"), float("nan")))
    row["gaussians"] = int((opacities >= min_opacity).sum())
    row["seconds"] = time.perf_counter() - t0
    return row


def model_predictor(args, choice=None) -> tuple[Predictor, str, bool]:
    """(predict, weights description, random?) from the model search of ``geolrm_jax.inference`` (``choice``:
    an ``inference.ModelChoice`` already resolved)."""
    from geolrm_jax import inference

    if choice is None:
        choice = inference.resolve_model(args.checkpoint, args.model_config, args.dtype)
    model, weights, random_weights = inference.load_model(choice, args.seed)

    def predict(images, c2w, K, alphas=None):
        return model.predict(images, c2w, K)

    return predict, weights, random_weights


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (method, family, num_views) over objects (NaN entries skipped; ``objects`` counts rows).
    Families in order of appearance, then ``all`` (every object); only ``all`` when no row has a family."""
    out = []
    methods = list(dict.fromkeys(r.get("method", "model") for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows if r.get("family")))
    for method in methods:
        for family in [*families, "all"]:
            for n in sorted({r["num_views"] for r in rows}):
                group = [r for r in rows if r["num_views"] == n and r.get("method", "model") == method
                         and family in ("all", r.get("family"))]
                if not group:
                    continue
                entry = {"method": method, "family": family, "num_views": n, "objects": len(group)}
                for m in METRICS:
                    values = [r[m] for r in group if not math.isnan(r[m])]
                    entry[m] = float(np.mean(values)) if values else float("nan")
                out.append(entry)
    return out


def format_summary(summary: list[dict]) -> str:
    head = f"{'method':<12} {'family':<8} {'views':>5} {'objects':>7} " + " ".join(f"{m:>9}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(f"{s['method']:<12} {s['family']:<8} {s['num_views']:>5} {s['objects']:>7} "
                     + " ".join(f"{s[m]:>9.4f}" for m in METRICS))
    return "\n".join(lines)


def write_csv(path: pathlib.Path, rows: list[dict], fields) -> None:
    from geolrm_jax import io_atomic

    with io_atomic.staged_output(path, folder=False) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def csv_problem(path: pathlib.Path, fields) -> str | None:
    """None when ``path`` is a CSV with this command's header ``fields`` (``--overwrite`` may replace it)."""
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return f"unreadable as CSV ({type(err).__name__})"
    return None if header == list(fields) else "its header differs from this command's"


def check_arguments(args) -> None:
    """Numeric arguments in range; ``ValueError`` naming the flag."""
    for n in args.num_views:
        input_view_ids(n)
    for flag, value in (("--max-objects", args.max_objects), ("--max-targets", args.max_targets),
                        ("--input-size", args.input_size), ("--render-size", args.render_size),
                        ("--num-points", args.num_points)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if args.hull_grid < 2:
        raise ValueError(f"--hull-grid {args.hull_grid}: must be at least 2")
    if not args.hull_scale > 0:
        raise ValueError(f"--hull-scale {args.hull_scale}: must be positive")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geolrm-jax eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="folder of objects in the GObjaverse layout")
    p.add_argument("--object-list", help="object list JSON (default ROOT/object_list.json)")
    p.add_argument("--split", default="validation")
    p.add_argument("--max-objects", type=int, help="evaluate only the first N objects of the split")
    p.add_argument("--num-views", type=int, nargs="+", default=[4],
                   help="input view counts; several give the views-vs-quality table (e.g. 4 8 12 16 20)")
    p.add_argument("--max-targets", type=int, default=8)
    p.add_argument("--method", nargs="+", choices=METHODS, default=["model"],
                   help="predictor(s): the model and/or the visual-hull baseline, on the same inputs")
    p.add_argument("--hull-grid", type=int, default=64, help="visual hull voxel grid side")
    p.add_argument("--hull-scale", type=float, default=0.5, help="visual hull Gaussian standard deviation (voxels)")
    p.add_argument("--input-size", type=int, help="input size, for every method (default 448, tiny config 56)")
    p.add_argument("--render-size", type=int, default=448)
    p.add_argument("--checkpoint")
    p.add_argument("--model-config", help="official | tiny | config.json")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint is found")
    p.add_argument("--lpips-weights", help=".npz from geolrm-jax lpips-weights (LPIPS is skipped without it)")
    p.add_argument("--num-points", type=int, default=geometry_metrics.DEFAULT_NUM_POINTS)
    p.add_argument("--out", default="evals", help="folder for metrics.csv and summary.csv")
    p.add_argument("--overwrite", action="store_true", help="replace metrics.csv / summary.csv in --out")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from geolrm_jax import io_atomic

    return io_atomic.run_command("geolrm-jax eval", lambda: _evaluate(args))


def _evaluate(args) -> int:
    from geolrm_jax import inference, io_atomic
    from geolrm_jax.data import gobjaverse_io

    check_arguments(args)
    root = pathlib.Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    list_path = pathlib.Path(args.object_list or root / "object_list.json")
    splits = gobjaverse_io.read_object_list(list_path)
    if args.split not in splits:
        raise ValueError(f"{list_path}: no split {args.split!r} (has {sorted(splits)})")
    names = splits[args.split][: args.max_objects]
    if not names:
        raise ValueError(f"{list_path}: split {args.split!r} lists no object")
    # resolved for every method: the input size defaults to the one the model would get
    choice = inference.resolve_model(args.checkpoint, args.model_config, args.dtype)
    input_size = args.input_size or inference.DEFAULT_IMAGE_SIZE.get(choice.preset, 448)
    step = int(np.lcm(4, choice.config.encoder.dino_patch))
    if "model" in args.method and input_size % step:
        raise ValueError(f"--input-size {input_size} must be a multiple of {step}")
    lpips_params = None
    if args.lpips_weights:
        from geolrm_jax.train.lpips import load_lpips_params

        lpips_params = io_atomic.read_or_fail(load_lpips_params, args.lpips_weights, "LPIPS weights")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise io_atomic.OutputError(f"--out {out}: exists and is not a folder")
    inputs = [root, list_path, choice.checkpoint, args.lpips_weights]
    for name, fields in (("metrics.csv", CSV_FIELDS), ("summary.csv", SUMMARY_FIELDS)):
        io_atomic.check_destination(out / name, inputs=inputs, overwrite=args.overwrite,
                                    owned=lambda path, fields=fields: csv_problem(path, fields), folder=False)
    predictors = {}
    if "model" in args.method:
        predictors["model"], weights, random_weights = model_predictor(args, choice)
        if random_weights:
            print(f"WARNING: {inference.describe_model(choice)}.")
        print(f"weights: {weights}")
    if "visual_hull" in args.method:
        from geolrm_jax import visual_hull

        predictors["visual_hull"] = visual_hull.predictor(args.hull_grid, scale=args.hull_scale)
        print(f"visual hull: {args.hull_grid}^3 voxels over [-0.5, 0.5]^3, carved from the input alpha masks, "
              f"Gaussians of {args.hull_scale} voxel")
    from geolrm_jax.data.eval_set import read_family

    rows, bad = [], []
    for name in names:
        family = read_family(str(root / name))
        object_rows = []
        try:
            for method, predict in predictors.items():
                for n in args.num_views:
                    row = evaluate_object(str(root / name), predict, n, input_size=input_size,
                                          render_size=args.render_size, max_targets=args.max_targets,
                                          lpips_params=lpips_params, num_points=args.num_points)
                    object_rows.append({"object_id": name, "family": family, "method": method, "num_views": n,
                                        **row})
                    print(f"{name} {method} N={n}: " + " ".join(f"{m}={row[m]:.4f}" for m in METRICS), flush=True)
        except gobjaverse_io.BadInputError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            bad.append(name)
            continue
        rows.extend(object_rows)
    if not rows:
        print(f"geolrm-jax eval: error: no object of split {args.split!r} could be evaluated", file=sys.stderr)
        return 2
    summary = summarize(rows)
    write_csv(out / "metrics.csv", rows, CSV_FIELDS)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    print(format_summary(summary))
    if bad:
        print(f"{len(bad)} objects skipped as unreadable: {', '.join(bad)}")
    print(f"wrote {out / 'metrics.csv'} and {out / 'summary.csv'}")
    return 0
