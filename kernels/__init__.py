"""Pallas kernels of geolrm-jax, installed under the import name ``geolrm_kernels``.

Each module holds one op: the Pallas kernel bodies, the ``pallas_call`` wrappers, the op's derivative rules (a
``derivatives.DerivativeFamily``: every JAX transform, the kernels serving the primal and the gradient) and a
pure-jnp ``*_reference`` with the same contract.
"""
