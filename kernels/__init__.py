"""Pallas kernels of geolrm-jax, installed under the import name ``geolrm_kernels``.

Each module holds one op: the Pallas kernel bodies, the ``pallas_call`` wrappers, the ``custom_vjp`` and a
pure-jnp ``*_reference`` with the same contract.
"""
