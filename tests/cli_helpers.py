"""Running the installed `w2sdefense` console script from tests, and reading its one `error:` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("w2sdefense"))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `w2sdefense ARGS` from the repository root with extra environment variables."""
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO,
                          timeout=600)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a command that must fail with exit code 2 and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def default_or(*named: str) -> list[str]:
    """The arguments that run what `clean`'s default runs without the optional Gemma package: none where the package
    is missing (CI: the default path itself runs), else `named` (with it, the default for a small suspect is the
    Gemma distillation, too slow for a test; tests/test_evidence.py covers that choice)."""
    from w2sdefense.defenses.evidence import EVIDENCE, missing_package

    gemma = [m for m in EVIDENCE if m.settings.get("student_model") == "gemma3-270m"]
    return [] if all(missing_package(m) for m in gemma) else list(named)
