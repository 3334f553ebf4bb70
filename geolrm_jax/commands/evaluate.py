"""``geolrm-jax eval``: image and geometry metrics over a dataset split (``geolrm_jax.evaluate``)."""

from __future__ import annotations

HELP = "PSNR/SSIM/LPIPS and Chamfer/F-score over a dataset split"


def main(argv: list[str]) -> int:
    from geolrm_jax import evaluate

    return evaluate.main(argv)
