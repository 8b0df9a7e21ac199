"""The architecture in the folder tree: imports flow one way, from the base modules up to the CLI.

    base (errors, fileio, config, registry, runtime, rundir, progress, results, stages) -> data -> models -> train, eval,
    attacks
    -> defenses -> pipeline, clean, scan (the workflows: none imports another) -> api -> cli (its commands call the
    api's functions)

A module may import from its own package or from a lower layer, never from a higher one or a sibling
of its layer (train and eval do not know each other). Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "w2sdefense"
LAYERS = [
    {"errors"}, {"fileio"}, {"config", "registry"}, {"runtime", "rundir", "progress"}, {"results"}, {"stages"},
    {"data"}, {"models"}, {"train", "eval", "attacks"}, {"defenses"}, {"pipeline", "clean", "scan"}, {"api"}, {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The layer unit of a module file: its subpackage, or its own name for a top-level module."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, unit) of every w2sdefense import in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "w2sdefense"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "w2sdefense" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_module_belongs_to_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for line, target in _imports(path):
            if target != unit and target in RANK and RANK[target] >= RANK[unit]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({unit}) imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
