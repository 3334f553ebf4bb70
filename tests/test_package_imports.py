"""geolrm_jax's modules import each other without a cycle, lazy (function-level) imports included."""
from import_graph import REPO, find_cycle, import_graph


def test_geolrm_jax_imports_form_no_cycle():
    graph, _ = import_graph(REPO / "geolrm_jax", "geolrm_jax")
    assert len(graph) > 50 and graph["geolrm_jax.reconstruct"]
    assert find_cycle(graph) is None, find_cycle(graph)
