"""Every function in the package fits on a screen (STYLE.md: about 60 lines, docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "w2sdefense"
MAX_LINES = 60


def _long_functions(root: Path, limit: int) -> list[str]:
    """`file:line name (N lines)` of every function or method under `root` longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    assert _long_functions(PACKAGE, MAX_LINES) == []


def test_the_check_sees_a_long_function(tmp_path: Path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"class C:\n    def short(self):\n        return 1\n\n\ndef long():\n{body}")
    assert _long_functions(tmp_path, MAX_LINES) == [f"m.py:6 long ({MAX_LINES + 1} lines)"]
