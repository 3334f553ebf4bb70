"""``geolrm-jax convert``: a released PyTorch checkpoint -> an Orbax folder (``geolrm_jax.model.convert``)."""

from __future__ import annotations

HELP = "convert a released PyTorch checkpoint (.ckpt/.pt/.safetensors) to Orbax"


def main(argv: list[str]) -> int:
    from geolrm_jax.model import convert

    return convert.main(argv)
