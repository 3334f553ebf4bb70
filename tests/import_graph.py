"""The import graph of a package read from its source (every import statement, lazy ones included), for the
tests of the import rules (tests/kernels/test_kernel_imports.py, tests/test_package_imports.py)."""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def module_name(path: pathlib.Path, root: pathlib.Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: pathlib.Path) -> set[str]:
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


def import_graph(root: pathlib.Path, package: str):
    """(module -> the package's modules it imports, module -> every module it names). A module's own ancestor
    packages are left out: Python initializes them before the module anyway (``from pkg import sub`` in a
    sibling names ``pkg``)."""
    modules = {module_name(p, root, package): p for p in root.rglob("*.py")}
    named = {name: imported_names(path) for name, path in modules.items()}
    graph = {name: sorted(m for m in found if m in modules and m != name and not name.startswith(m + "."))
             for name, found in named.items()}
    return graph, named


def find_cycle(graph):
    """A cycle of the directed graph as a list of nodes (first = last), or None."""
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
