"""The kernels depend on nothing above them: no module under kernels/ imports geolrm_jax (at any level, lazy
imports included), and their imports of each other form no cycle."""
import os
import subprocess
import sys

from import_graph import REPO, find_cycle, import_graph


def _graph():
    return import_graph(REPO / "kernels", "geolrm_kernels")


def test_no_kernel_module_imports_geolrm_jax():
    _, imports = _graph()
    offenders = {name: sorted(m for m in found if m.split(".")[0] == "geolrm_jax") for name, found in imports.items()}
    assert len(imports) > 10
    assert not any(offenders.values()), offenders


def test_kernel_imports_form_no_cycle():
    graph, _ = _graph()
    assert graph["geolrm_kernels.deformable.api"]  # the graph sees the package's own imports
    assert find_cycle(graph) is None, find_cycle(graph)
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]  # the check can fail


def test_importing_every_kernel_module_loads_no_geolrm_jax():
    graph, _ = _graph()
    code = f"import sys\nfor m in {sorted(graph)!r}: __import__(m)\nprint(sorted(m for m in sys.modules if " \
           "m.startswith('geolrm_jax')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
