"""The folders are the layers: what each may import, read from the source with ``ast`` (imports inside functions
and under ``TYPE_CHECKING`` count too), and no import cycle between modules.

    core/                       imports nothing else of fcnseg (numpy; click in cli_args only)
    runtime/ (+ backends, video) imports only core/ and itself: the runtime wheel ships exactly these two
    datasets/, eval/, train/, export/, benchmarks/, serve/
                                take from runtime/ only its public API: ``fcnseg.runtime`` (the package),
                                ``fcnseg.runtime.backends.*`` and ``fcnseg.runtime.video`` (the package)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "datasets", "eval", "train", "export", "runtime", "benchmarks", "serve")
# What each folder may import besides itself and core/ (None: any folder).
ALLOWED = {
    "core": set(),
    "runtime": set(),
    "datasets": {"runtime"},
    "eval": {"datasets", "runtime"},
    "train": {"datasets", "eval", "runtime"},
    "export": {"datasets", "eval", "runtime", "train"},
    "benchmarks": None,
    "serve": {"export", "runtime"},
}
RUNTIME_PUBLIC = ("fcnseg.runtime", "fcnseg.runtime.video")   # and everything under fcnseg.runtime.backends


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["fcnseg"] + parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py") if "templates" not in f.parts}


def exported(package: Path) -> Set[str]:
    """The names a package's ``__init__`` lists in ``__all__`` (``from pkg import name`` takes those from it)."""
    init = package / "__init__.py" if package.is_dir() else package
    if not init.is_file():
        return set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return {ast.literal_eval(e) for e in node.value.elts}  # type: ignore[attr-defined]
    return set()


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> List[Tuple[str, int]]:
    """(imported fcnseg module, line) for every import statement in the file, wherever it stands."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            target = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            names = exported(modules[target]) if target in modules else set()
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules and a.name not in names else target
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t.startswith("fcnseg.") and t != name]
    return found


def import_graph() -> Dict[str, Set[Tuple[str, int]]]:
    modules = package_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def folder(module: str) -> str:
    return module.split(".")[1]


def test_the_tree_has_every_layer():
    modules = package_modules()
    assert {folder(m) for m in modules} == set(PACKAGES)
    assert len(modules) > 80


def test_each_folder_imports_only_the_layers_below_it():
    bad = []
    for name, targets in import_graph().items():
        allowed = ALLOWED[folder(name)]
        for target, line in sorted(targets):
            other = folder(target)
            if other in (folder(name), "core") or allowed is None:
                continue
            if other not in allowed:
                bad.append(f"{name}:{line} imports {target}")
    assert bad == []


def test_other_stages_take_only_the_runtimes_public_api():
    bad = [f"{name}:{line} imports {target}" for name, targets in import_graph().items()
           if folder(name) != "runtime" for target, line in sorted(targets)
           if folder(target) == "runtime" and target not in RUNTIME_PUBLIC
           and not target.startswith("fcnseg.runtime.backends")]
    assert bad == []


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    graph = {name: {t for t, _ in targets} for name, targets in import_graph().items()}
    # A package importing its own submodules (``__init__`` re-exports) is how Python packages work, not a cycle.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    assert find_cycles(graph) == []


@pytest.mark.parametrize("graph,expected", [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])])
def test_the_cycle_finder_finds_a_cycle(graph, expected):
    assert find_cycles(graph) == expected


def test_folder_rules_catch_a_runtime_import_of_training(tmp_path):
    """The rule check reads real files: a runtime module importing training is reported with its line."""
    modules = {"fcnseg.runtime.x": tmp_path / "x.py", "fcnseg.train.checkpoint": tmp_path / "c.py"}
    (tmp_path / "x.py").write_text("import os\n\ndef f():\n    from ..train.checkpoint import load\n")
    assert imports_of("fcnseg.runtime.x", tmp_path / "x.py", modules) == [("fcnseg.train.checkpoint", 4)]


def layer_table() -> str:
    """Imports between folders (module-level and lazy alike), for the docs and the closing note."""
    counts: Dict[Tuple[str, str], int] = defaultdict(int)
    for name, targets in import_graph().items():
        for target, _ in targets:
            if folder(target) != folder(name):
                counts[folder(name), folder(target)] += 1
    return "\n".join(f"{a:>10} -> {b:<10} {n}" for (a, b), n in sorted(counts.items()))


if __name__ == "__main__":
    print(layer_table())
