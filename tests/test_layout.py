"""The package shows its pipeline: subpackages in layers, no upward import, no circle; the
README's layout section matches the tree; the repository carries no stray artefacts."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "onnxmp")
# lowest first: a unit may import its own subpackage and the units before it, never one after it
LAYERS = (("errors", "_version"), ("model",), ("runtime",), ("quant",), ("targets",), ("rounding",),
          ("search",), ("output",), ("finetune",), ("pipeline",), ("cli", "__init__", "__main__"))
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_TRACKED_BYTES = 5 * 2**20
ARTEFACTS = (".data", ".onnx_data")


def module_imports(package: str) -> dict[str, set[str]]:
    """Every module under ``package`` (dotted, e.g. ``onnxmp.search.phase1``) → the package's
    modules it imports, lazy imports inside functions included."""
    name = os.path.basename(package)
    modules = {}
    for folder, _, files in os.walk(package):
        for file in files:
            if file.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, file), os.path.dirname(package))[:-3]
                modules[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(folder, file)

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == name)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == name:
                # ``from pkg.sub import mod`` imports the module ``pkg.sub.mod`` when there is one
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                               for a in node.names)
        graph[module] = {t for t in map(resolve, targets) if t and t != module}
    return graph


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = unit_of(module), unit_of(target)
            if here not in RANK or there not in RANK:
                problems.append(f"{module} -> {target}: a unit missing from LAYERS")
            elif here != there and RANK[there] > RANK[here]:
                problems.append(f"{module} ({here}) imports {target} ({there}), a higher layer")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (one path each), found by depth-first search."""
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_upward_import_and_no_circle():
    graph = module_imports(PACKAGE)
    assert len(graph) > 30 and "onnxmp.search.phase1" in graph
    assert upward_imports(graph) == []
    assert circles(graph) == []


def test_the_check_finds_upward_imports_and_circles(tmp_path):
    pkg = tmp_path / "onnxmp"
    for sub in ("model", "search"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text('"""x"""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "loader.py").write_text("def f():\n    from onnxmp.search import simulate\n")
    (pkg / "search" / "simulate.py").write_text("from onnxmp.search.partial import Cut\n")
    (pkg / "search" / "partial.py").write_text("import onnxmp.search.simulate\n")
    graph = module_imports(str(pkg))
    assert upward_imports(graph) == ["onnxmp.model.loader (model) imports onnxmp.search.simulate (search), a higher layer"]
    assert circles(graph) == [["onnxmp.search.simulate", "onnxmp.search.partial", "onnxmp.search.simulate"]]


def test_every_subpackage_says_what_it_owns_and_the_readme_lists_the_tree():
    subpackages = sorted(d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py")))
    for sub in subpackages:
        with open(os.path.join(PACKAGE, sub, "__init__.py"), encoding="utf-8") as f:
            assert ast.get_docstring(ast.parse(f.read())), f"onnxmp/{sub}/__init__.py has no docstring"
        assert sub in RANK, f"onnxmp/{sub} is not in the layers of this test"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    listed = sorted(re.findall(r"^ {2}(\w+)/", section, flags=re.M))
    assert listed == subpackages


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and os.path.isdir(os.path.join(ROOT, ".git"))


@pytest.mark.skipif(not _in_git_checkout(), reason="not a git checkout")
def test_no_big_or_generated_file_is_tracked():
    tracked = [p for p in _git("ls-files", "-z").split("\0") if p]
    sizes = {p: os.path.getsize(os.path.join(ROOT, p)) for p in tracked if os.path.isfile(os.path.join(ROOT, p))}
    assert [p for p, size in sizes.items() if size > MAX_TRACKED_BYTES] == []
    assert [p for p in tracked if p.endswith(ARTEFACTS) and not p.startswith("models/")] == []


@pytest.mark.skipif(not _in_git_checkout(), reason="not a git checkout")
def test_external_data_temporaries_are_ignored():
    probes = ["4be52fd6-e748-11f1-845b-02fc00000001.data", "benchmarks/out.onnx.data", "tests/x.onnx_data"]
    ignored = subprocess.run(["git", "-C", ROOT, "check-ignore", *probes], capture_output=True, text=True).stdout.split()
    assert ignored == probes
