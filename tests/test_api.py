"""The Python API (w2sdefense.api): `clean_model` and `scan_model` from paths and from in-memory objects, quiet,
with typed reports equal to what the command wrote."""

from __future__ import annotations

import json
import random

import pytest

import w2sdefense
from w2sdefense.errors import UserError
from w2sdefense.models.tiny import build_tiny
from w2sdefense.results import CleanReport, ScanReport


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    return [{"text": " ".join(rng.choice(words[i % 2]) for _ in range(4)), "label": i % 2} for i in range(n)]


DATA = {"train": _rows(48, 0), "dev": _rows(8, 1), "test": _rows(12, 2)}


def test_importing_the_package_gives_the_api_without_loading_torch():
    import subprocess
    import sys

    code = "import sys, w2sdefense; print(callable(w2sdefense.clean_model), 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["True", "False"]


def test_clean_model_from_memory_is_quiet_and_returns_the_written_report(tmp_path, capsys):
    model, tok = build_tiny("tiny-llama", 2)
    report = w2sdefense.clean_model((model, tok), DATA, tmp_path / "cleaned", defense="lora-ft", triggers=["cf"],
                                    settings=["defense.train.max_steps=4"])
    assert isinstance(report, CleanReport)
    assert capsys.readouterr().out == ""  # quiet: no stage lines, no progress
    written = CleanReport.from_json(json.loads((tmp_path / "cleaned" / "report.json").read_text()))
    assert written == report and report.defense["name"] == "lora-ft"
    assert report.after.clean_total == len(DATA["test"]) and report.after.triggers[0].trigger == "cf"
    assert (tmp_path / "cleaned" / "model" / "config.json").is_file()


def test_scan_model_from_a_folder_and_a_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    model, tok = build_tiny("tiny-bert", 2)
    model.save_pretrained(tmp_path / "suspect")
    tok.save_pretrained(tmp_path / "suspect")
    data = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in DATA.items()})
    report = w2sdefense.scan_model(tmp_path / "suspect", data, tmp_path / "scan",
                                   settings=["scan.steps=2", "scan.lengths=[1]"])
    assert isinstance(report, ScanReport) and report.skipped == {"embedding-shift": "needs the public base (--base)"}
    assert ScanReport.from_json(json.loads((tmp_path / "scan" / "report.json").read_text())) == report


def test_wrong_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="model must be"):
        w2sdefense.scan_model(object(), DATA, tmp_path / "a")
    with pytest.raises(UserError, match="data must be"):
        w2sdefense.scan_model("tiny-llama", {"validation": []}, tmp_path / "b")
    with pytest.raises(UserError, match="list of dotted"):
        w2sdefense.scan_model("tiny-llama", DATA, tmp_path / "c", settings="scan.steps=2")


def test_run_config_returns_the_typed_report_it_wrote(small_data, tmp_path):
    from w2sdefense.results import ExperimentReport, ReportRow

    out = tmp_path / "run"
    report = w2sdefense.run_config("configs/tiny-badnet.yaml", [f"output_dir={out}", f"data.data_dir={small_data}",
                                                                "defenses=[{name: lora-ft}]"])
    assert isinstance(report, ExperimentReport) and all(isinstance(r, ReportRow) for r in report.rows)
    assert [r.model for r in report.rows] == ["clean model", "poisoned", "lora-ft"]
    written = json.loads((out / "report.json").read_text())
    assert report.to_json() == written and report.by_model()["lora-ft"].clean_accuracy == written["rows"][2]["clean_accuracy"]
