"""``geolrm-jax train``: train stage 1 or stage 2 (``geolrm_jax.train.main``)."""

from __future__ import annotations

HELP = "train stage 1 (occupancy) or stage 2 (rendering): --config, --workdir"


def main(argv: list[str]) -> int:
    from geolrm_jax.train import main as train_main

    return train_main.main(argv)
