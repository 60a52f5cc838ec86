"""The package's shape, read from its source with `ast`: imports flow one way (no circle among the modules,
nor among the rooms, a subpackage counting as one), package imports sit at the top of their module, and no
module passes 400 lines."""

import ast

from conftest import REPO

PACKAGE = REPO / "vae_compare"
MAX_LINES = 400


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name, path):
    """(module imported, whether the import sits inside a function) for every import of a package module in
    `path`, wherever it is: `from vae_compare.x import y` counts as an import of vae_compare.x.y when that is
    a module, else of vae_compare.x."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    inside = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import vae_compare.x.Thing` -> vae_compare.x
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, id(node) in inside


def import_graph(room=lambda name: name):
    """{module: set of the package modules it imports}, with modules merged by `room`."""
    graph = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(room(name), set())
        edges.update(room(target) for target, _ in imported_modules(name, path) if room(target) != room(name))
    return graph


def circles(graph):
    """Every import circle of the graph, each as the list of its modules (Tarjan's strongly connected components
    with more than one member)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room_of(name):
    """A top-level module is its own room; a subpackage's modules share one (vae_compare.report.*)."""
    return ".".join(name.split(".")[:2])


def test_the_circle_finder_names_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_the_imports_the_source_makes():
    graph = import_graph()
    # a top-level import, one through `from vae_compare import x`, and one from a subpackage
    assert "vae_compare.train" in graph["vae_compare.cli"]
    assert "vae_compare.rundir" in graph["vae_compare.train"]
    assert "vae_compare.report.collect" in graph["vae_compare.report.gaps"]


def test_no_import_circle_among_modules_or_rooms():
    for graph in (import_graph(), import_graph(room_of)):
        found = circles(graph)
        assert not found, "import circles: " + "; ".join(" <-> ".join(circle) for circle in found)


def test_package_imports_sit_at_the_top_of_their_module():
    inside = [f"{name} imports {target} inside a function" for name, path in MODULES.items()
              for target, in_function in imported_modules(name, path) if in_function]
    assert not inside, "; ".join(inside)


def test_no_module_over_400_lines():
    paths = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))
    long = {path.relative_to(REPO).as_posix(): count for path in paths
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
