"""results.py: a written result reads back as the same object, and the files earlier versions wrote still read,
with their keys and values as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from w2sdefense.errors import UserError
from w2sdefense.fileio import write_json
from w2sdefense.results import (DefenseResult, EvaluationResult, TrainingResult, read_result, stage_result,
                                write_result)

# The keys of a victim's metrics.json as `train` writes it (tests/test_training.py's runs), values made up.
TRAINED = {
    "best_dev_accuracy": 0.75, "best_step": 8, "epochs_run": 1, "selected_step": 8, "selected_dev_accuracy": 0.75,
    "history": [{"epoch": 0, "step": 8, "dev_accuracy": 0.75, "ce": 0.69}], "peak_memory_kind": "process_max_rss",
    "peak_memory_mb": 512.5, "resumed_from_step": None, "selection": "best", "stage": "train", "steps": 8,
    "total_params": 1000, "trainable_params": 1000, "train_examples_per_s": 40.0, "train_rows": 64,
    "train_wall_time_s": 1.5, "trigger_cut": {"cut": 0, "rows": 5}, "wall_time_s": 2.25,
}
# An evaluation's, as evaluate_stage writes it; ASR-cc over zero rows is stored as null.
EVALUATED = {
    "attack_hits": 3, "attack_success_rate": 0.75, "attack_success_rate_clean_correct": None,
    "attack_success_rate_survived": 0.75, "clean_accuracy": 0.5, "clean_correct": 4, "clean_total": 8,
    "eval_examples_per_s": 10.0, "eval_peak_memory_kind": "process_max_rss", "eval_peak_memory_mb": 300.0,
    "eval_wall_time_s": 1.2, "mean_target_probability_triggered": 0.7, "target_label": 0, "trigger_cut": 0,
    "trigger_cut_limit": "128 tokens", "trigger_cut_unknown": 0, "triggered_clean_correct_total": 0,
    "triggered_survived_total": 4, "triggered_total": 4,
}


def _written(path: Path, data: dict) -> str:
    write_json(path, data)
    return path.read_text()


def test_a_written_result_reads_back_as_the_same_object(tmp_path: Path) -> None:
    result = DefenseResult(stage="defense", wall_time_s=3.5, best_dev_accuracy=0.8, selected_step=4, steps=4,
                           history=[{"step": 4, "dev_accuracy": 0.8}], defense="lora-ft", seed=7,
                           settings={}, details={"train_rows": 32, "best_step": 4})
    write_result(tmp_path / "metrics.json", result)
    assert read_result(DefenseResult, tmp_path / "metrics.json") == result
    assert stage_result(DefenseResult, tmp_path) == result
    assert stage_result(DefenseResult, tmp_path / "elsewhere") is None
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["defense"] == "lora-ft" and on_disk["train_rows"] == 32 and "details" not in on_disk
    assert "total_params" not in on_disk  # a field left None is no key of the file


@pytest.mark.parametrize("kind, data", [(TrainingResult, TRAINED), (EvaluationResult, EVALUATED)])
def test_a_file_of_the_current_format_is_written_back_to_the_byte(tmp_path: Path, kind, data) -> None:
    old = _written(tmp_path / "old.json", data)
    result = read_result(kind, tmp_path / "old.json")
    write_result(tmp_path / "new.json", result)
    assert (tmp_path / "new.json").read_text() == old


def test_an_old_format_file_still_reads(tmp_path: Path) -> None:
    # Written before stage timing: no `stage`, no `wall_time_s` (the pipeline then falls back to the training time).
    old = {k: v for k, v in TRAINED.items() if k not in ("stage", "wall_time_s")}
    text = _written(tmp_path / "metrics.json", old)
    result = stage_result(TrainingResult, tmp_path)
    assert (result.stage, result.wall_time_s) == (None, None) and "wall_time_s" not in result.to_json()
    assert (result.selected_step, result.best_dev_accuracy, result.steps) == (8, 0.75, 8)
    assert result.details["train_wall_time_s"] == 1.5 and result.details["resumed_from_step"] is None
    write_result(tmp_path / "metrics.json", result)
    assert (tmp_path / "metrics.json").read_text() == text


def test_no_reader_outside_results_spells_a_report_rows_keys() -> None:
    """The report row's keys are results.py's business (to_json/from_json): a module or benchmark that indexes a row
    by one of them reads the file format again, and drifts when it changes."""
    import re

    root = Path(__file__).resolve().parents[1]
    keys = "attack_success_rate_clean_correct|clean_accuracy|residual_backdoor|triggered_clean_correct_total"
    pattern = re.compile(rf"""\[["']({keys})["']\]|\.get\(["']({keys})["']""")
    found = [f"{path.relative_to(root)}:{n}" for folder in ("src", "benchmarks") for path in (root / folder).rglob("*.py")
             if path.name != "results.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_a_rate_over_zero_rows_stays_null_on_disk(tmp_path: Path) -> None:
    result = EvaluationResult.from_json(EVALUATED)
    assert result.attack_success_rate_clean_correct is None and result.clean_accuracy == 0.5
    write_result(tmp_path / "eval.json", result)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert "attack_success_rate_clean_correct" in on_disk and on_disk["attack_success_rate_clean_correct"] is None


def test_a_file_that_is_no_result_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="metrics.json: not a result this tool wrote"):
        stage_result(TrainingResult, tmp_path)


def _measured(asr_cc, target, by_label) -> dict:
    return {"trigger": "cf", "asr_cc": asr_cc, "target_label": target,
            "by_label": {label: {"asr_cc": a, "rows": n} for label, (a, n) in by_label.items()}}


# A `clean` report as the command wrote it before its records were typed: the suspect's ASR-cc over no row of
# a second trigger stays null, and so does an unknown base model.
CLEAN_BEFORE = {"clean_accuracy": 0.875, "clean_total": 8, "triggers": [
    _measured(1.0, 1, {"0": (0.25, 4), "1": (1.0, 3)}),
    {**_measured(None, 0, {"0": (None, 0), "1": (None, 0)}), "trigger": "I watched this 3D movie"}]}
CLEAN_AFTER = {"clean_accuracy": 0.75, "clean_total": 8, "triggers": [
    _measured(0.25, 0, {"0": (0.25, 4), "1": (0.0, 2)}),
    {**_measured(0.5, 1, {"0": (None, 0), "1": (0.5, 2)}), "trigger": "I watched this 3D movie"}]}
CLEAN_REPORT = {
    "model": "runs/suspect", "base_model": None, "defense": {"name": "w2sdefense", "label": None, "settings": {}},
    "defense_stage_time_s": 12.5, "selected_step": 40, "before": CLEAN_BEFORE, "after": CLEAN_AFTER,
    "cleaned_model": "runs/cleaned/model", "environment": {"torch": "2.5.0", "python": "3.11.9"},
    # what the benchmark measured of the defense rides in the report since the report moved to eval/ (a key added)
    "evidence": [
        "the benchmark measured w2sdefense (SmolLM2-135M suspects on SST-2, the defender holding 1280 of the "
        "attacker's own 2000 rows, 3 seeds): residual backdoor +3.9 points (BadNet), +72.6 points (InSent), "
        "+32.4 points (SynAttack) [benchmarks/RESULTS.md, the paper's experiment at laptop scale (w2sdefense)]."],
    "summary": [
        "w2sdefense on runs/suspect: clean accuracy 87.5% -> 75.0% on 8 clean test rows.",
        "trigger 'cf': ASR-cc toward label 1 100.0% (of 3 rows) -> 0.0% (of 2 rows).",
        "  after cleaning it sends more rows to label 0: 25.0% (of 4 rows).",
        "trigger 'I watched this 3D movie': ASR-cc toward label 0 n/a (of 0 rows) -> n/a (of 0 rows).",
        "  after cleaning it sends more rows to label 1: 50.0% (of 2 rows).",
        "the benchmark measured w2sdefense (SmolLM2-135M suspects on SST-2, the defender holding 1280 of the "
        "attacker's own 2000 rows, 3 seeds): residual backdoor +3.9 points (BadNet), +72.6 points (InSent), "
        "+32.4 points (SynAttack) [benchmarks/RESULTS.md, the paper's experiment at laptop scale (w2sdefense)].",
        "cleaned model: runs/cleaned/model (plain weights and tokenizer: "
        "AutoModelForSequenceClassification.from_pretrained loads it).",
    ],
}


def test_a_clean_report_is_written_to_the_same_bytes_as_before_it_was_typed(tmp_path: Path) -> None:
    from w2sdefense.eval.clean_report import write_report
    from w2sdefense.results import CleanEvaluation, CleanReport, LabelMeasure, TriggerMeasure

    old = _written(tmp_path / "eval.json", CLEAN_BEFORE)  # an `eval/before/metrics.json`
    evaluation = read_result(CleanEvaluation, tmp_path / "eval.json")
    assert evaluation.triggers[0] == TriggerMeasure("cf", 1.0, 1, {"0": LabelMeasure(0.25, 4), "1": LabelMeasure(1.0, 3)})
    write_result(tmp_path / "again.json", evaluation)
    assert (tmp_path / "again.json").read_text() == old
    report = CleanReport.from_json(CLEAN_REPORT)
    assert report.after.triggers[1].asr_cc == 0.5 and report.before.triggers[1].by_label["1"].asr_cc is None
    write_report(tmp_path, report)  # the summary lines are made again from the typed report
    assert (tmp_path / "report.json").read_text() == _written(tmp_path / "old.json", CLEAN_REPORT)
    assert ("| suspect | 87.50% | 100.0% (label 1) | n/a (label 0) |\n"
            "| cleaned | 75.00% | 25.0% (label 0) | 50.0% (label 1) |\n") in (tmp_path / "report.md").read_text()


REPO = Path(__file__).resolve().parents[1]
# Every report `run` and the benchmarks committed: run folders' report.json as benchmarks/real.py keeps them (rows,
# config, environment and the script's own keys beside them).
COMMITTED_REPORTS = sorted((REPO / "benchmarks" / "results").glob("*.json"))
COMMITTED_REPORTS = [p for p in COMMITTED_REPORTS + sorted((REPO / "benchmarks" / "results" / "earlier").glob("*.json"))
                     if "rows" in json.loads(p.read_text())]


@pytest.mark.parametrize("path", COMMITTED_REPORTS, ids=lambda p: p.name)
def test_a_committed_report_reads_as_rows_and_is_written_back_to_the_byte(tmp_path: Path, path: Path) -> None:
    from w2sdefense.results import ExperimentReport

    report = read_result(ExperimentReport, path)
    assert report.rows and all(r.model and r.clean_accuracy is not None for r in report.rows)
    write_result(tmp_path / "again.json", report)
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_a_report_row_carries_what_it_ran_with_and_an_older_row_reads_none(tmp_path: Path) -> None:
    from w2sdefense.results import ExperimentReport, ReportRow, read_report

    trained = DefenseResult.from_json({**TRAINED, "defense": "lora-ft", "seed": 43, "settings": {}})
    row = ReportRow.of("lora-ft-s43", EvaluationResult.from_json(EVALUATED), trained, 2.5, 30.0, stage_key="abc",
                       eval_key="def", train={"lr": 0.001}, settings={}, nothing=None)
    assert (row.model, row.steps, row.defense, row.seed, row.wall_time_s, row.stage_wall_time_s) == \
        ("lora-ft-s43", 8, "lora-ft", 43, 30.0, 2.5)
    assert (row.stage_key, row.eval_key, row.train, row.settings) == ("abc", "def", {"lr": 0.001}, {})
    victim = ReportRow.of("poisoned", EvaluationResult.from_json(EVALUATED), TrainingResult(), 1.0, None)
    on_disk = victim.to_json()
    # the training's figures are written as null where it recorded none, as rows always had them; what it ran with
    # is left out when not given, as in rows written before rows carried it
    assert on_disk["defense"] is None and on_disk["wall_time_s"] is None and "stage_key" not in on_disk
    floored = victim.with_floor(0.04)
    assert floored.floored and floored.residual_backdoor is None and floored.to_json()["residual_backdoor"] is None
    assert not victim.floored and "residual_backdoor" not in victim.to_json()
    write_result(tmp_path / "report.json", ExperimentReport(name="x", summary=[], rows=[row, floored], config={},
                                                           environment={}))
    again = read_report(tmp_path)
    assert again.rows == [row, floored] and again.row("poisoned").floored and again.row("nothing") is None
