"""The ``geolrm-jax`` console script (``python -m geolrm_jax.cli``); the commands are in ``geolrm_jax.commands``."""

from __future__ import annotations

import sys

from geolrm_jax.commands import COMMANDS, main

__all__ = ["COMMANDS", "main"]

if __name__ == "__main__":
    sys.exit(main())
