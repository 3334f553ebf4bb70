"""``geolrm-jax demo``: the web demo (``geolrm_jax.demo_app``)."""

from __future__ import annotations

HELP = "web demo (Gradio) on 127.0.0.1: upload views, get Gaussians, a video and a mesh"


def main(argv: list[str]) -> int:
    from geolrm_jax import demo_app

    return demo_app.main(argv)
