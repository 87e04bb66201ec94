"""The layout shows the architecture: packages in data-flow order, each importing only those
below it, no import circles, no module over 500 lines. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "koemo"
#: bottom to top; "" is the foundation (koemo/*.py: errors, paths, config, metrics, sources, ...)
LAYERS = ["", "data", "models", "asr", "encoders", "fusion", "training", "evaluation", "experiments", "serving"]
TOP = {"koemo.cli", "koemo.__main__", "koemo.api"}  # the command line and the Python API see everything
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """koemo modules ``path`` imports anywhere (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out |= {t for t in targets if t in known}
    return out


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else 0


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        targets = imports(path, name, known)
        if path.name == "__init__.py":  # a package re-exporting or registering its own modules
            targets = {t for t in targets if not t.startswith(name + ".")}
        edges[name] = targets - {name}
    return edges


def test_no_module_over_500_lines():
    long = {name: n for name, p in modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long


def test_no_package_imports_one_above_it():
    up = sorted(f"{a} -> {b}" for a, ts in graph().items() if a not in TOP for b in ts if layer(b) > layer(a))
    assert not up


def test_no_import_circles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    assert not cycles


@pytest.mark.parametrize("planted, rule", [
    ("from koemo.serving.app import create_app", test_no_package_imports_one_above_it),
    ("from koemo.training.trainer import score", test_no_import_circles),
])
def test_the_checks_see_a_planted_violation(tmp_path, monkeypatch, planted, rule):
    """metrics (foundation) importing serving is a layering violation; training.trainer already
    imports metrics, so metrics importing it back closes a circle."""
    target = ROOT / "metrics.py"
    original = target.read_text(encoding="utf-8")
    fake = {**modules()}
    copy = tmp_path / "metrics.py"
    copy.write_text(original + f"\n\ndef _planted():\n    {planted}\n", encoding="utf-8")
    fake["koemo.metrics"] = copy
    monkeypatch.setattr(__import__(__name__, fromlist=["modules"]), "modules", lambda: fake)
    with pytest.raises(AssertionError):
        rule()
