"""The import graph of ``sophon/`` and ``app/``, read from the source with :mod:`ast`.

Every ``import`` and ``from ... import`` counts, module level or inside a function (a lazy import
is still a dependency); ``from package import name`` is an edge to ``package.name`` when that is
a module, else to ``package``. Imports by name through :mod:`importlib` are not static and do not
count (the store's default score-head loader is one, on purpose). A module naming itself (the
server hook file ``app/app_hooks.py`` reaches its own module) is no circle.

The rules:

- no import circle among the project's modules;
- ``sophon/`` imports nothing from ``app/``;
- ``sophon/store.py`` imports neither torch nor :mod:`sophon.model` (the store sits below the
  model, the discriminant and the spectrum);
- ``sophon/generate/`` does not import the store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sophon", "app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "__pycache__" not in path.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` (the file ``path``) imports: project modules and external tops."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, path, known) for name, path in sources.items()}


def _internal(graph: dict[str, set[str]], name: str) -> set[str]:
    return {target for target in graph[name] if target in graph and target != name}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(_internal(graph, node)):
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
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read(graph):
    assert {"sophon.store", "sophon.scoring", "sophon.scorers", "app.state",
            "app.app_hooks", "sophon.generate.writer"} <= set(graph)
    assert "sophon.store" in graph["sophon.scoring"]
    assert "app.selection" in graph["app.explorer"]  # `from app import selection`


def test_no_import_circle(graph):
    assert _circles(graph) == []


def test_the_circle_finder_finds_one():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}}) == [["a", "b", "c"]]


def test_the_library_imports_nothing_from_the_app(graph):
    wrong = {name: sorted(t for t in targets if _in(t, "app"))
             for name, targets in graph.items() if _in(name, "sophon")}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_store_imports_neither_torch_nor_the_model(graph):
    banned = [t for t in graph["sophon.store"]
              if _in(t, "torch") or _in(t, "sophon.model") or _in(t, "onnxruntime")]
    assert banned == []


def test_the_generator_does_not_import_the_store(graph):
    wrong = {name: sorted(t for t in targets if _in(t, "sophon.store"))
             for name, targets in graph.items() if _in(name, "sophon.generate")}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_scorer_family_lives_in_one_module(graph):
    import sophon.export
    import sophon.scorers
    import sophon.scoring

    for name in ("Scorer", "TorchScorer", "OnnxScorer", "load_scorer", "resolve_device",
                 "resolve_precision"):
        assert getattr(sophon.scorers, name).__module__ == "sophon.scorers"
        assert not hasattr(sophon.export, name)
    # sophon.training imports these two from sophon.scoring: kept there as re-exports
    assert sophon.scoring.resolve_device is sophon.scorers.resolve_device
    assert sophon.scoring.resolve_precision is sophon.scorers.resolve_precision
