"""Rewrite one marked section of benchmarks/RESULTS.md (or the README), leaving the rest as it is."""

from __future__ import annotations

from pathlib import Path

from w2sdefense.fileio import atomic_write_text

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
README = Path(__file__).resolve().parents[1] / "README.md"


def update_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    atomic_write_text(path, f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}")
