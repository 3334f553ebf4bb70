"""The kernels depend on nothing above them: no module under kernels/ imports geolrm_jax (at any level, lazy
imports included), and their imports of each other form no cycle."""
import ast
import pathlib
import subprocess
import sys

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def _module_name(path):
    parts = ["geolrm_kernels", *path.relative_to(KERNELS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Every module named by an import statement of the file, at any nesting level (from-imports give both the
    package and package.name, since the name may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph():
    """(module -> the kernel modules it imports, module -> every module it names). A module's own ancestor
    packages are left out: Python initializes them before the module anyway (``from pkg import sub`` in a
    sibling names ``pkg``)."""
    modules = {_module_name(p): p for p in KERNELS.rglob("*.py")}

    def is_ancestor(package, name):
        return name.startswith(package + ".")

    graph = {name: sorted(m for m in _imports(path) if m in modules and m != name and not is_ancestor(m, name))
             for name, path in modules.items()}
    return graph, {name: _imports(path) for name, path in modules.items()}


def _cycle(graph):
    """A cycle of the directed graph as a list of nodes, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_kernel_module_imports_geolrm_jax():
    _, imports = _graph()
    offenders = {name: sorted(m for m in found if m.split(".")[0] == "geolrm_jax") for name, found in imports.items()}
    assert len(imports) > 10
    assert not any(offenders.values()), offenders


def test_kernel_imports_form_no_cycle():
    graph, _ = _graph()
    assert graph["geolrm_kernels.deformable.api"]  # the graph sees the package's own imports
    assert _cycle(graph) is None, _cycle(graph)
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]  # the check can fail


def test_importing_every_kernel_module_loads_no_geolrm_jax():
    graph, _ = _graph()
    code = f"import sys\nfor m in {sorted(graph)!r}: __import__(m)\nprint(sorted(m for m in sys.modules if " \
           "m.startswith('geolrm_jax')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
