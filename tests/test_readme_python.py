"""The README's Python examples, run as a newcomer would run them, on tiny models: each fenced block of its
"## Python" section, in order, with the packaged model's name swapped for `tiny-llama`, the placeholder paths for
the folders the earlier blocks wrote, and the datasets read from a small SST-2-shaped data dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from w2sdefense.results import CleanReport, EvaluationResult

REPO = Path(__file__).resolve().parents[1]
SWAPS = {"smollm2-135m": "tiny-llama", "path/to/suspect": "runs/victim", "path/to/clean-data": "sst2",
         '"configs/': f'"{REPO}/configs/'}


def python_blocks(readme: str) -> list[str]:
    """The ```python blocks of the README's "## Python" section, in order."""
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def swapped(block: str) -> str:
    for old, new in SWAPS.items():
        block = block.replace(old, new)
    return block


def test_the_readme_has_the_stage_the_practitioner_and_the_experiment_examples():
    blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 3
    assert "poison_data" in blocks[0] and "clean_model" in blocks[1] and "run_experiment" in blocks[2]
    assert all(old in "".join(blocks) for old in SWAPS)  # every swap still has something to replace


def test_the_readmes_python_examples_run_as_written_on_tiny_models(small_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("W2S_DATA_DIR", str(small_data))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    scope: dict = {}
    exec(compile(swapped(blocks[0]), "README.md (stages)", "exec"), scope)
    asr_cc = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(scope["poisoned"].folder, Path) and (scope["poisoned"].folder / "poison.json").is_file()
    assert (tmp_path / "runs" / "victim" / "model").is_dir() and (tmp_path / "runs" / "defended" / "model").is_dir()
    again = scope["evaluate_model"]("runs/defended", scope["poisoned"].folder)
    assert isinstance(again, EvaluationResult) and asr_cc == again.attack_success_rate_clean_correct

    exec(compile(swapped(blocks[1]), "README.md (practitioner)", "exec"), scope)
    printed = [None if x == "None" else float(x) for x in capsys.readouterr().out.split()]
    written = CleanReport.from_json(json.loads((tmp_path / "runs" / "cleaned" / "report.json").read_text()))
    assert printed == [written.before.clean_accuracy, written.after.clean_accuracy, written.after.triggers[0].asr_cc]
    assert (tmp_path / "runs" / "cleaned" / "model" / "config.json").is_file()
    assert written.after.triggers[0].trigger == scope["found"].candidates[0].trigger

    exec(compile(swapped(blocks[2]), "README.md (experiment)", "exec"), scope)
    report = json.loads((tmp_path / scope["cfg"].output_dir / "report.json").read_text())
    assert report["rows"] and scope["cfg"].defenses[0].settings.get("beta") == pytest.approx(0.01)
