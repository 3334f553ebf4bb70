"""Score a reconstruction of the bundled sample against its truth (``geolrm_jax.sample_quality``); JSON out.

    python tools/sample_quality.py outputs/sample                 # a geolrm-jax reconstruct output folder
    python tools/sample_quality.py --checkpoint geolrm_jax/assets/checkpoints/demo
    python tools/sample_quality.py                                # the model geolrm-jax reconstruct would pick
    python tools/sample_quality.py --random-weights --model-config demo.json --out random.json
    python tools/sample_quality.py --checkpoint CKPT --views 0 3 5 7   # the views tests/test_demo_model.py uses

Prints one JSON object: ``source`` (the folder or the model line), ``views`` (held-out views used),
``render_size`` and the metrics of the module doc of ``geolrm_jax.sample_quality`` (distances in units of the
object's extent). ``--out`` also writes it to a file (written beside it, then renamed). Exit 2 with one line
on bad input.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", nargs="?", help="a geolrm-jax reconstruct output folder (with gaussians.ply); "
                   "without it a model runs on the sample")
    p.add_argument("--checkpoint", help="weights to run on the sample (default: geolrm-jax reconstruct's search)")
    p.add_argument("--model-config", help="official | tiny | config.json (as geolrm-jax reconstruct)")
    p.add_argument("--random-weights", action="store_true", help="seeded random weights of --model-config")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    p.add_argument("--truth", help="truth folder (default tests/data/sample_truth)")
    p.add_argument("--views", type=int, nargs="+", help="held-out view indices to score (default all)")
    p.add_argument("--render-size", type=int, help="render and compare at this size (default: the truth's)")
    p.add_argument("--out", help="also write the JSON here")
    return p


def run(args) -> dict:
    from geolrm_jax import io_atomic, sample_quality

    if args.output and (args.checkpoint or args.random_weights or args.model_config):
        raise ValueError("give an output folder or --checkpoint/--random-weights/--model-config, not both")
    if args.random_weights and args.checkpoint:
        raise ValueError("--random-weights and --checkpoint: choose one")
    if args.render_size is not None and args.render_size < 16:
        raise ValueError(f"--render-size {args.render_size}: must be at least 16 (the SSIM window is 11 px)")
    if args.out:
        io_atomic.check_destination(pathlib.Path(args.out), inputs=[args.output, args.checkpoint], overwrite=True,
                                    owned=lambda path: None, folder=False)
    truth = sample_quality.load_truth(args.truth or sample_quality.TRUTH_DIR, args.views, args.render_size)
    if args.output:
        gaussians, source = sample_quality.gaussians_from_folder(args.output), str(args.output)
    else:
        gaussians, source = sample_quality.gaussians_from_model(args.checkpoint, args.model_config,
                                                                random_weights=args.random_weights, seed=args.seed)
    result = {"source": source, "views": args.views or list(range(len(truth.c2w))),
              "render_size": int(truth.images.shape[1]), **sample_quality.score(gaussians, truth)}
    text = json.dumps(result, indent=1)
    if args.out:
        io_atomic.write_text(args.out, text + "\n")
    print(text)
    return result


def main(argv=None) -> int:
    from geolrm_jax import io_atomic

    args = _parser().parse_args(argv)
    return io_atomic.run_command("sample_quality", lambda: run(args) and 0)


if __name__ == "__main__":
    sys.exit(main())
