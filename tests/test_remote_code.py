"""No checkpoint runs code of its own: every transformers loader in the package pins trust_remote_code=False."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "w2sdefense"
LOADERS = ("from_pretrained", "from_config")


def _transformers_loader_calls() -> list[tuple[str, ast.Call]]:
    """(file:line, call) of every `X.from_pretrained(...)` / `X.from_config(...)` whose X a file imports from
    transformers (at any depth, under any alias)."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.asname or alias.name for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers"
                    for alias in node.names}
        calls += [(f"{path.relative_to(PACKAGE)}:{node.lineno}", node) for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in LOADERS and isinstance(node.func.value, ast.Name)
                  and node.func.value.id in imported]
    return calls


def _pins_false(call: ast.Call) -> bool:
    return any(k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
               for k in call.keywords)


def test_every_transformers_loader_pins_trust_remote_code_to_false():
    calls = _transformers_loader_calls()
    # models/ loads configs, tokenizers and models in a dozen places: finding fewer means this test went blind.
    assert len(calls) >= 10, [where for where, _ in calls]
    assert [where for where, call in calls if not _pins_false(call)] == []


def test_the_check_sees_a_loader_that_does_not_pin_it():
    tree = ast.parse("from transformers import AutoTokenizer as T\nT.from_pretrained('x')\n"
                     "T.from_pretrained('x', trust_remote_code=False)\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [_pins_false(c) for c in sorted(calls, key=lambda c: c.lineno)] == [False, True]
