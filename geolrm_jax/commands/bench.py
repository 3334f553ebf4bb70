"""``geolrm-jax bench``: inference time and memory per stage (``geolrm_jax.benchmark``)."""

from __future__ import annotations

HELP = "inference time and peak memory per stage"


def main(argv: list[str]) -> int:
    from geolrm_jax import benchmark

    return benchmark.main(argv)
