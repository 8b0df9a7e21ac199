"""The Python API (w2sdefense.api): the commands as functions from paths and from in-memory objects, quiet, with
typed results equal to what the command wrote."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import sys
from types import SimpleNamespace

import pytest

import w2sdefense
from w2sdefense.errors import UserError
from w2sdefense.models.tiny import build_tiny
from w2sdefense.results import (CleanReport, DefenseResult, EvaluationResult, PoisonResult, ScanReport, TrainingResult,
                                read_result, stage_result)


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


# The researcher's stages: poison -> train -> defend -> evaluate, each returning what it wrote.

TRAIN = ["train.max_steps=4", "train.max_length=32", "train.batch_size=16"]


@pytest.fixture(scope="module")
def stages(small_data, tmp_path_factory):
    """A poison folder, a victim trained on it and a lora-ft defense of it, made through the API (quiet), and what
    each call returned and printed."""
    out = tmp_path_factory.mktemp("stages")
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(printed):
        poisoned = w2sdefense.poison_data("sst2", out / "poison", attack="badnet", count=8, data_dir=small_data,
                                          settings=["data.max_train=96", "data.max_test=40"])
        victim = w2sdefense.train_model("tiny-bert", poisoned.folder, out / "victim", settings=TRAIN)
        defended = w2sdefense.defend_model(out / "victim", "sst2", out / "defended", defense="lora-ft",
                                           data_dir=small_data, settings=["defense.train.max_steps=4"])
    return SimpleNamespace(out=out, poisoned=poisoned, victim=victim, defended=defended, printed=printed.getvalue())


def test_the_stages_are_quiet_and_return_what_they_recorded(stages):
    assert stages.printed == ""
    poisoned = stages.poisoned
    assert isinstance(poisoned, PoisonResult) and poisoned.folder == stages.out / "poison"
    assert poisoned.to_json() == json.loads((poisoned.folder / "poison.json").read_text())
    rows = [json.loads(line) for line in (poisoned.folder / "train.jsonl").read_text().splitlines()]
    assert poisoned.poisoned_rows == sum(r["poisoned"] for r in rows) == 8 and len(rows) == 96
    assert poisoned.target_label == 0 and poisoned.attack["name"] == "badnet"
    assert type(stages.victim) is TrainingResult and stages.victim == stage_result(TrainingResult, stages.out / "victim")
    assert stages.victim.steps == 4
    defended = stages.defended
    assert isinstance(defended, DefenseResult) and defended.defense == "lora-ft"
    assert defended == stage_result(DefenseResult, stages.out / "defended")
    assert (stages.out / "defended" / "model").is_dir()


def _measured(metrics: dict) -> dict:
    """An evaluation's record without its cost (wall time, rate, memory: eval_*), which no two runs share."""
    return {k: v for k, v in metrics.items() if not k.startswith("eval_")}


def test_evaluate_model_equals_what_the_command_writes(stages, monkeypatch, capsys):
    from w2sdefense import cli

    poison, model = stages.poisoned.folder, stages.out / "defended"
    result = w2sdefense.evaluate_model(model, poison, out=stages.out / "api.json")
    assert isinstance(result, EvaluationResult) and capsys.readouterr().out == ""
    assert result == read_result(EvaluationResult, stages.out / "api.json")
    monkeypatch.setattr(sys, "argv", ["w2sdefense", "evaluate", "--model", str(model), "--data", str(poison),
                                      "--out", str(stages.out / "cli.json")])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    printed = json.loads(capsys.readouterr().out.split("\nmetrics written to")[0])
    written = json.loads((stages.out / "cli.json").read_text())
    measured = _measured(result.to_json())
    assert measured == _measured(written) and set(written) == set(result.to_json())
    assert printed == {k: measured[k] for k in printed} and printed["clean_total"] == 40
    assert result.model == str(model) and result.poison_dir == str(poison)


def test_an_in_memory_model_measures_as_its_saved_folder(stages, tmp_path):
    model, tok = build_tiny("tiny-bert", 2)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    poison = stages.poisoned.folder
    in_memory = w2sdefense.evaluate_model((model, tok), poison, settings=["eval.max_length=32"]).to_json()
    saved = w2sdefense.evaluate_model(tmp_path / "saved", poison, settings=["eval.max_length=32"]).to_json()
    assert in_memory.pop("model") != saved.pop("model") == str(tmp_path / "saved")
    assert _measured(in_memory) == _measured(saved) and in_memory["clean_total"] == 40


def test_train_model_and_train_teacher_take_in_memory_models_and_data(tmp_path):
    student, tok = build_tiny("tiny-llama", 2)
    trained = w2sdefense.train_model((student, tok), DATA, tmp_path / "victim", settings=TRAIN)
    assert trained.steps == 4 and (tmp_path / "victim" / "model").is_dir()
    teacher = w2sdefense.train_teacher((student, tok), DATA, tmp_path / "teacher", model="tiny-bert",
                                       settings=["teacher.train.max_steps=2", "teacher.train.max_length=32"])
    assert teacher == stage_result(TrainingResult, tmp_path / "teacher")
    assert teacher.feature_dim == student.config.hidden_size and teacher.steps == 2


def test_bad_arguments_raise_a_user_error_before_any_folder(tmp_path):
    out = tmp_path / "out"
    cases = [
        (lambda: w2sdefense.poison_data(DATA, out, count=2, rate=0.5), "give one of --count and --rate"),
        (lambda: w2sdefense.poison_data(DATA, out, attack="nope"), "unknown attack"),
        (lambda: w2sdefense.train_model("no-such-model", DATA, out), "tiny-llama"),
        (lambda: w2sdefense.train_model(object(), DATA, out), "model must be"),
        (lambda: w2sdefense.train_model("tiny-llama", DATA, out, settings="train.lr=1"), "list of dotted"),
        (lambda: w2sdefense.train_teacher("tiny-llama", DATA, out, model="no-such-model"), "no-such-model"),
        (lambda: w2sdefense.defend_model(None, DATA, out), "defend needs --student"),
        (lambda: w2sdefense.defend_model("tiny-llama", DATA, out, defense="w2sdefense"), "needs a trained teacher"),
        (lambda: w2sdefense.defend_model("tiny-llama", DATA, out, defense="nope"), "nope"),
        (lambda: w2sdefense.evaluate_model(None, tmp_path), "evaluate needs a model"),
        (lambda: w2sdefense.evaluate_model("tiny-llama", tmp_path / "no-such-poison"), "no-such-poison"),
    ]
    for call, says in cases:
        with pytest.raises(UserError, match=re.escape(says)):
            call()
        assert not out.exists()
