"""Every third-party module that ``sophon/`` and ``app/`` import is declared in pyproject.toml
where its use says, read from the source with :mod:`ast` (an ``import`` inside a function counts):

- a module imported at module level: the core ``dependencies`` (in ``sophon/generate/``, or the
  ``generate`` extra), each of which is used (no dead core dependency);
- a module imported inside a function or inside ``try: ... except ImportError`` (an optional
  one): the core, or the extra of :data:`sophon.extras.EXTRAS` that lists it, which
  pyproject.toml declares alike (:func:`sophon.extras.require` names its extra: that one); an
  optional module no extra can install (the RAPIDS UMAP) is in :data:`UNDECLARED` with the reason.

The library outside ``sophon/generate/`` imports nothing from it at module level (``import
sophon.X`` works without Pythia), and the Makefile and environment.yml install what the tests
need: the core, the extras and the pinned CPU torch.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sophon.extras import EXTRAS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sophon", "app")
OWN = {"sophon", "app"}
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "umap": "umap-learn", "weaver": "weaver-core",
                 "sklearn": "scikit-learn"}
#: optional modules imported with a fallback that no extra can install
UNDECLARED = {"cuml": "RAPIDS' GPU UMAP (sophon/embedding.py), not on PyPI; falls back to "
                      "umap-learn"}
#: the extras the test suite needs (the Makefile installs them)
TEST_EXTRAS = {"test", "generate", "onnx", "embed", "root", "figures", "anomaly", "dask"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(module: str) -> str:
    return _normalised(DISTRIBUTIONS.get(module, module))


def _requirement_name(requirement: str) -> str:
    return _normalised(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))


@pytest.fixture(scope="module")
def declared() -> dict[str, set[str]]:
    """"core" and each extra -> the distributions pyproject.toml declares there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_requirement_name(r) for r in requirements}
            for group, requirements in groups.items()}


@dataclass(frozen=True)
class Import:
    module: str  # the top-level module
    file: str  # relative to the repository root
    line: int
    in_function: bool
    with_fallback: bool  # inside try/except ImportError
    extra: str | None = None  # through sophon.extras.require(module, extra, ...)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    for handler in node.handlers:
        caught = handler.type
        types = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(isinstance(t, ast.Name) and t.id in names for t in types):
            return True
    return False


def _imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    relative = str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(tree):
        modules, extra = [], None
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "require" and len(node.args) >= 2
              and all(isinstance(a, ast.Constant) for a in node.args[:2])):
            modules, extra = [node.args[0].value], node.args[1].value
        if not modules:
            continue
        ancestors, current = [], node
        while current in parents:
            current = parents[current]
            ancestors.append(current)
        in_function = any(isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef))
                          for a in ancestors)
        with_fallback = any(isinstance(a, ast.Try) and _catches_import_error(a)
                            for a in ancestors)
        for module in modules:
            found.append(Import(module, relative, node.lineno, in_function, with_fallback, extra))
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return [found for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "__pycache__" not in path.parts for found in _imports_of(path)]


def _third_party(imports: list[Import]) -> list[Import]:
    return [i for i in imports
            if i.module.split(".")[0] not in OWN and i.module.split(".")[0] not in
            sys.stdlib_module_names and not i.module.startswith("__future__")]


def _top(found: Import) -> Import:
    return Import(found.module.split(".")[0], found.file, found.line, found.in_function,
                  found.with_fallback, found.extra)


def test_the_imports_are_read():
    found = {(i.file, i.module) for i in _imports_of(ROOT / "sophon" / "scorers.py")}
    assert ("sophon/scorers.py", "torch") in found
    assert ("sophon/scorers.py", "onnxruntime") in found  # require("onnxruntime", "onnx", ...)
    lazy = [i for i in _imports_of(ROOT / "sophon" / "spectrum.py") if i.module == "hist"]
    assert lazy and all(i.in_function for i in lazy)
    fallback = [i for i in _imports_of(ROOT / "sophon" / "oracle.py")
                if i.module.startswith("weaver")]
    assert fallback and all(i.with_fallback for i in fallback)


def _extra_of(module: str) -> str | None:
    return next((extra for extra, modules in EXTRAS.items() if module in modules), None)


def test_every_third_party_import_is_declared_where_its_use_says(imports, declared):
    wrong = []
    for found in map(_top, _third_party(imports)):
        distribution = _distribution(found.module)
        optional = found.in_function or found.with_fallback
        extra = found.extra or (_extra_of(found.module) if optional else None)
        if distribution in declared["core"] and found.extra is None:
            continue
        if found.file.startswith("sophon/generate/") and distribution in declared["generate"]:
            continue
        if extra is not None:
            if found.module not in EXTRAS.get(extra, ()):
                wrong.append(f"{found} through the {extra!r} extra, which sophon.extras.EXTRAS "
                             "does not give it")
            elif distribution not in declared.get(extra, set()):
                wrong.append(f"{found}: {distribution} is not in pyproject.toml's {extra!r} "
                             "extra")
        elif found.with_fallback and found.module in UNDECLARED:
            continue
        elif optional:
            wrong.append(f"{found} inside a function: declare {distribution} in the core "
                         "dependencies, or in an extra (pyproject.toml and sophon.extras.EXTRAS)")
        else:
            wrong.append(f"{found} at module level: {distribution} is not in pyproject.toml's "
                         "dependencies (an optional module is imported inside the function "
                         "that needs it, and declared in an extra)")
    assert wrong == []


def test_every_core_dependency_is_used_outside_the_generator(imports, declared):
    used = {_distribution(i.module.split(".")[0]) for i in _third_party(imports)
            if not i.file.startswith("sophon/generate/") and i.extra is None}
    assert sorted(declared["core"] - used) == []


def test_the_extras_agree_with_sophon_extras(declared):
    for extra, modules in EXTRAS.items():
        assert {_distribution(m) for m in modules} == declared[extra], extra


def test_the_library_imports_the_generator_only_inside_functions(imports):
    """``import sophon.X`` outside sophon/generate must work without the generate extra."""
    wrong = [str(i) for i in imports
             if (i.module == "sophon.generate" or i.module.startswith("sophon.generate."))
             and not i.file.startswith("sophon/generate/") and not i.in_function]
    assert wrong == []


def test_the_makefile_installs_the_tests_extras_and_the_pinned_cpu_torch(declared):
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\n$(VENV)/.installed: pyproject.toml\n", 1)[1].split("\n\n", 1)[0]
    torch = re.search(r"pip install --quiet (torch==\S+)", recipe)
    editable = re.search(r"pip install --quiet -e '\.\[([\w,]+)\]'", recipe)
    assert torch and editable, recipe
    assert torch.start() < editable.start()  # the pin first: the package then keeps it
    assert set(editable.group(1).split(",")) == TEST_EXTRAS
    assert "torch" in declared["core"] and TEST_EXTRAS <= set(declared)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert torch.group(1) not in pyproject and not re.search(r'"torch\s*(==|<)', pyproject)


def test_environment_yml_lists_what_the_makefile_installs(declared):
    text = (ROOT / "environment.yml").read_text()
    listed = {_requirement_name(item.strip()) for item in
              re.findall(r"^\s*-\s+([A-Za-z][\w.-]*[^\n#]*)", text, re.MULTILINE)}
    conda_names = {"pytorch": "torch"}
    listed = {conda_names.get(name, name) for name in listed}
    wanted = declared["core"].union(*(declared[extra] for extra in TEST_EXTRAS))
    assert sorted(wanted - listed) == []
