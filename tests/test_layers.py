"""The core (optprune.solve, optprune.alloc, optprune.nn) and the kit
(optprune.experiments) never import a method package (bayes, train_prune, sprint, hw,
encode): every import statement of their files, at any depth, is parsed and resolved."""

from __future__ import annotations

import ast
from pathlib import Path

import optprune

ROOT = Path(optprune.__file__).parent
CORE = ("solve", "alloc", "nn", "experiments")
METHODS = ("bayes", "train_prune", "sprint", "hw", "encode")


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    mod = _module_of(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from . import x" may import a submodule x: count both
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def _violations() -> list[str]:
    bad = []
    for area in CORE:
        for path in sorted((ROOT / area).rglob("*.py")):
            for line, target in _imports(path):
                parts = target.split(".")
                if len(parts) >= 2 and parts[0] == "optprune" and parts[1] in METHODS:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    return bad


def test_core_never_imports_methods():
    assert _violations() == []


def test_the_rule_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "optprune" / "nn"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from ..hw import tiles\n    from .. import sprint\n"
                 "import optprune.encode.bounds\nfrom .models import ViT\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "optprune")
    got = {t for _, t in _imports(f)}
    assert {"optprune.hw", "optprune.sprint", "optprune.encode.bounds",
            "optprune.nn.models"} <= got
