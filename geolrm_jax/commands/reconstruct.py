"""``geolrm-jax reconstruct``: posed images -> Gaussians, a turntable video, renders (``geolrm_jax.reconstruct``)."""

from __future__ import annotations

HELP = "posed images -> Gaussians (.ply, .splat) and a turntable video"


def main(argv: list[str]) -> int:
    from geolrm_jax import reconstruct

    return reconstruct.main(argv)
