"""The package's layering: imports run downwards only (commands → studies/perf → training → data → model →
metrics → leaves), no command imports another command, and no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "showtell"
LEAVES = {"errors", "files", "lazy", "options", "vocab", "hardware"}
LAYERS = ["leaves", "metrics", "model", "data", "training", "studies", "perf", "commands"]
RANK = {"leaves": 0, "metrics": 1, "model": 2, "data": 3, "training": 4, "studies": 5, "perf": 5, "commands": 6}
ALIASES = {"loggers"}  # old module paths kept for configs and saved runs: one import, downwards
MAX_LINES = 500


def _layer(module: str) -> str:
    parts = module.split(".")
    if (PACKAGE / parts[0] / "__init__.py").exists():
        return parts[0]
    if len(parts) == 1:
        return "leaves" if parts[0] in LEAVES else "commands"
    return parts[0]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            if not name.startswith("showtell."):
                continue
            name = name.removeprefix("showtell.")
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_the_package_has_its_layers():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert {"metrics", "model", "data", "training", "studies"} <= subpackages
    for module in _modules():
        if not module:
            continue  # showtell/__init__.py
        assert _layer(module) in RANK, f"showtell.{module} is in no layer; add it to one in this test"


def test_imports_run_downwards_only():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        mine = _layer(module)
        for other in _imports(path, set(modules)):
            theirs = _layer(other)
            if other == module or (module == "" or other == ""):
                continue
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and mine != theirs):
                wrong.append(f"showtell.{module} ({mine}) imports showtell.{other} ({theirs})")
            elif mine == theirs == "commands" and module not in ALIASES:
                wrong.append(f"command showtell.{module} imports command showtell.{other}")
    assert not wrong, "\n".join(wrong)


def test_no_module_is_longer_than_500_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"
