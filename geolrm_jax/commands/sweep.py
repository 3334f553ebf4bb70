"""``geolrm-jax sweep``: expand a sweep config into train runs (``geolrm_jax.train.sweep``)."""

from __future__ import annotations

HELP = "expand a sweep config (get_hyper) into train runs; --launch runs them"


def main(argv: list[str]) -> int:
    from geolrm_jax.train import sweep

    return sweep.main(argv)
