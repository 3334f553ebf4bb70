"""Learning curves of training runs as a PNG: losses and validation metrics against steps.

    python tools/plot_training.py scalars.json --out docs/demo_training.png

Reads the JSON of tools/export_scalars.py ({workdir: {tag: [[step, value], ...]}}). Needs matplotlib.
"""
import argparse
import json

PANELS = (
    ("stage 1: occupancy loss", ("loss", "eval_loss")),
    ("stage 1: occupancy IoU", ("iou", "eval_iou")),
    ("stage 2: render loss", ("loss", "eval_loss")),
    ("stage 2: PSNR (dB)", ("psnr", "eval_psnr")),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scalars")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.scalars) as f:
        runs = json.load(f)
    names = sorted(runs)
    stage_runs = {stage: [n for n in names if n.rstrip("/").endswith(str(stage))] for stage in (1, 2)}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (title, tags) in zip(axes, PANELS, strict=True):
        stage = 1 if title.startswith("stage 1") else 2
        for run in stage_runs[stage]:
            for tag in tags:
                rows = runs[run].get(tag)
                if rows:
                    steps, values = zip(*rows, strict=True)
                    ax.plot(steps, values, label=f"{tag}", marker="o" if tag.startswith("eval") else None,
                            markersize=3, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
