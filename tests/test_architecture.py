"""The import layers of ``src/spa`` (docs/architecture.md): every import, function-level ones
included, goes from a package to one in its own layer or a lower one, and no modules or packages
import each other in a cycle. A failure names the file and line of the offending import."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from spa import repo_root

SRC = repo_root() / "src"
# lowest first; a package may import from its own layer and the layers below it
LAYERS: tuple[tuple[str, ...], ...] = (
    ("spa", "spa.utils", "spa.loggers"),
    ("spa.data", "spa.models"),
    ("spa.adapters",),
    ("spa.pruning",),
    ("spa.metrics", "spa.training", "spa.saved"),
    ("spa.records",),
    ("spa.settings",),
    ("spa.pipeline",),
    ("spa.reporting", "spa.deploy", "spa.export", "spa.bench"),
)
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package's __init__ is the package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(root: Path) -> list[tuple[str, str, Path, int]]:
    """(importer, imported, file, line) for every import of a module under ``root`` by another."""
    known = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None
    edges = []
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = subs if all(s in known for s in subs) else [base, *(s for s in subs if s in known)]
            else:
                continue
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != module and resolved.split(".")[0] in {m.split(".")[0] for m in known}:
                    edges.append((module, resolved, path, node.lineno))
    return edges


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycles(edges: list[tuple[str, str, Path, int]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    graph = defaultdict(set)
    for a, b, *_ in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def cycle_problems(edges: list[tuple[str, str, Path, int]], level=lambda m: m) -> list[str]:
    lifted = [(level(a), level(b), path, line) for a, b, path, line in edges if level(a) != level(b)]
    problems = []
    for component in cycles(lifted):
        members = set(component)
        problems.append("import cycle " + " <-> ".join(component) + ": " + "; ".join(
            f"{path.name}:{line} {a} -> {b}" for a, b, path, line in sorted(lifted, key=lambda e: (e[0], e[3]))
            if a in members and b in members))
    return problems


def layer_problems(edges: list[tuple[str, str, Path, int]]) -> list[str]:
    problems = []
    for a, b, path, line in edges:
        pa, pb = package_of(a), package_of(b)
        if pa not in LAYER or pb not in LAYER:
            problems.append(f"{path}:{line}: {pa if pa not in LAYER else pb} has no layer in LAYERS "
                            f"(add it to tests/test_architecture.py and docs/architecture.md)")
        elif LAYER[pa] < LAYER[pb]:
            problems.append(f"{path}:{line}: {a} (layer {LAYER[pa]}) imports {b} (layer {LAYER[pb]}): "
                            f"a lower layer must not import a higher one")
    return problems


def test_no_module_or_package_imports_another_in_a_cycle():
    edges = imports(SRC)
    assert len(edges) > 100                                 # the parser sees the real imports
    assert cycle_problems(edges) == []
    assert cycle_problems(edges, package_of) == []


def test_every_import_goes_to_the_same_or_a_lower_layer():
    assert layer_problems(imports(SRC)) == []


def test_every_package_has_a_layer():
    top = {package_of(m) for m in modules(SRC)}
    assert top == set(LAYER), f"place the new package in LAYERS: {sorted(top ^ set(LAYER))}"


def test_a_back_edge_and_a_cycle_are_caught_with_their_line(tmp_path):
    """A temporary tree: a low layer importing a high one inside a function, and two modules that
    import each other."""
    for name in ("spa/__init__.py", "spa/models/__init__.py", "spa/pipeline.py", "spa/data/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "spa/models/backbones.py").write_text("import torch\n\n\ndef f():\n    from spa.pipeline import run\n")
    (tmp_path / "spa/data/a.py").write_text("from spa.data import b\n")
    (tmp_path / "spa/data/b.py").write_text("from . import a\n")
    edges = imports(tmp_path)
    problems = layer_problems(edges)
    assert len(problems) == 1 and re.search(r"backbones\.py:5: spa\.models\.backbones \(layer 1\) imports "
                                            r"spa\.pipeline \(layer 7\)", problems[0])
    assert cycle_problems(edges) == ["import cycle spa.data.a <-> spa.data.b: a.py:1 spa.data.a -> spa.data.b; "
                                     "b.py:1 spa.data.b -> spa.data.a"]


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_architecture_note_lists_the_layers_in_order(doc):
    """The note's layer table names the packages of LAYERS, layer by layer, lowest first."""
    text = (repo_root() / doc).read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+)\|", text, flags=re.M)
    listed = tuple(tuple(re.findall(r"`(spa[\w.]*)`", packages)) for _, packages in rows)
    assert listed == LAYERS


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 50


def test_modules_and_functions_stay_readable_in_one_sitting():
    """No module of src/spa over 400 lines, no function over 50 (decorators and docstring included)."""
    long = []
    for path in sorted((SRC / "spa").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{start} {node.name}: {node.end_lineno - start + 1} lines")
    assert long == []
