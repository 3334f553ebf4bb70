"""The ``geolrm-jax`` command line: one module per subcommand, each thin (parse, validate, call the library).

Each module exposes ``HELP`` and ``main(argv) -> int`` and parses its own arguments, so ``geolrm-jax train
--help`` shows the trainer's flags. Modules are imported only when their command runs: ``geolrm-jax cameras``
does not pay for loading the model or the data pipeline.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under geolrm_jax.commands, one-line help); the help is repeated here so that listing the
# commands imports none of them (tests/test_cli.py checks it against each module's HELP).
COMMANDS = {
    "cameras": ("cameras", "camera presets and the ray embedding the model sees"),
    "convert": ("convert", "convert a released PyTorch checkpoint (.ckpt/.pt/.safetensors) to Orbax"),
    "train": ("train", "train stage 1 (occupancy) or stage 2 (rendering): --config, --workdir"),
    "sweep": ("sweep", "expand a sweep config (get_hyper) into train runs; --launch runs them"),
    "reconstruct": ("reconstruct", "posed images -> Gaussians (.ply, .splat) and a turntable video"),
    "eval": ("evaluate", "PSNR/SSIM/LPIPS and Chamfer/F-score over a dataset split"),
    "bench": ("bench", "inference time and peak memory per stage"),
    "data": ("data", "datasets: render meshes (render), build the TFDS dataset (build), procedural sets "
                     "(synthetic, eval-set)"),
    "lpips-weights": ("lpips_weights", "LPIPS-VGG16 weights (torchvision VGG16 + lpips lin layers) -> the .npz "
                                       "training and eval read"),
    "demo": ("demo", "web demo (Gradio) on 127.0.0.1: upload views, get Gaussians, a video and a mesh"),
}


def command_module(name: str):
    """The module of command ``name``."""
    return importlib.import_module(f"geolrm_jax.commands.{COMMANDS[name][0]}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: geolrm-jax COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngeolrm-jax: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return int(command_module(argv[0]).main(argv[1:]) or 0)
