"""benchmarks/scan_zoo.py: the zoo its recipe describes, the detection figures against hand computations, and the
whole chain (poison, train, evaluate, scan, figures) on tiny models."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scan_zoo  # noqa: E402

from w2sdefense.results import ScanCandidate  # noqa: E402


def test_the_zoo_has_equal_halves_and_the_issues_variety():
    models = scan_zoo.zoo_models(yaml.safe_load(scan_zoo.RECIPE.read_text()))
    bad = [m for m in models if m.backdoored]
    good = [m for m in models if not m.backdoored]
    assert len(bad) == len(good) >= 24 and len({m.name for m in models}) == len(models)
    assert {m.family for m in bad} == {"badnet", "insent", "synbkd", "stylebkd"}
    assert {m.dataset for m in bad} == {m.dataset for m in good} == {"sst2", "olid"}
    assert {m.mode for m in bad} == {"clean-label", "dirty-label"} and {m.budget for m in models} == {"gentle", "aggressive"}
    assert all(m.dataset == "sst2" for m in bad if m.transform)  # the transforms exist for SST-2 only
    for kind in (bad, good):
        assert sum(m.split == "held-out" for m in kind) * 2 >= len(kind)
    held, tuned = ({m.trigger for m in bad if m.split == s and m.trigger} for s in ("held-out", "tune"))
    assert held and not held & tuned  # no held-out trigger is used for tuning


def test_roc_auc_and_tpr_at_fpr_by_hand():
    assert scan_zoo.roc_auc([0.9, 0.8], [0.1, 0.85]) == 0.75  # (1 + 1 + 1 + 0) / 4
    assert scan_zoo.roc_auc([0.5], [0.5]) == 0.5
    assert scan_zoo.roc_auc([], [0.1]) is None
    negative = [i / 20 for i in range(20)]  # 20 clean models: one of them (5 %) may be flagged
    assert scan_zoo.tpr_at_fpr([0.97, 0.5, 0.96], negative) == pytest.approx(2 / 3)  # threshold 0.95
    assert scan_zoo.tpr_at_fpr([1.0], [1.0, 1.0]) == 0.0


def _candidate(trigger: str, test_asr_cc: float) -> ScanCandidate:
    return ScanCandidate(trigger=trigger, target_label=1, detector="d", verify_asr_cc=1.0, verify_rows=8,
                         test_asr_cc=test_asr_cc, test_rows=16)


def test_trigger_recovery_by_word_or_by_strength():
    m = scan_zoo.ZooModel(name="x", dataset="sst2", budget="gentle", seed=1, split="held-out", family="insent",
                          trigger="I watched this 3D movie")
    cand = [_candidate("3d", 0.2)]
    assert scan_zoo.recovered(m, cand, 0.9)
    assert scan_zoo.recovered(m, [_candidate("zz", 0.85)], 0.9)  # >= 90 % of the planted 0.9
    assert not scan_zoo.recovered(m, [_candidate("zz", 0.8)], 0.9)
    syn = scan_zoo.ZooModel(name="s", dataset="sst2", budget="gentle", seed=1, split="tune", family="synbkd",
                            transform="scpn")
    assert scan_zoo.recovered(syn, cand, 0.9) is None


def test_the_chain_on_tiny_models_writes_rows_and_figures(small_data, tmp_path, monkeypatch):
    recipe = yaml.safe_load(scan_zoo.RECIPE.read_text())
    recipe.update(model="tiny-bert", base="tiny-bert", rows=64, train={"max_length": 32, "batch_size": 8},
                  budgets={"gentle": {"epochs": 1, "lr": 1e-3}, "aggressive": {"epochs": 2, "lr": 3e-3}},
                  variants=[{"dataset": "sst2", "mode": "dirty-label", "rate": 0.3, "budget": "aggressive"}],
                  triggers=[{"family": "badnet", "trigger": "cf", "split": "held-out"}],
                  clean={"datasets": ["sst2"], "seeds": [1]},
                  scan=["scan.steps=5", "scan.verify_rows=8", "scan.test_rows=16"])
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("W2S_DATA_DIR", str(small_data))
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--recipe", str(path), "--runs", str(runs), "--results", str(results)]
    scan_zoo.main(argv)
    rows = [json.loads(line) for line in (results / "scan-zoo-rows.jsonl").read_text().splitlines()]
    assert [r["family"] for r in rows] == ["badnet", "clean", "clean"]
    bad = rows[0]
    planted = json.loads((runs / bad["name"] / "planted.json").read_text())
    assert bad["planted_asr_cc"] == planted["attack_success_rate_clean_correct"]
    assert bad["implanted"] == ((bad["planted_asr_cc"] or 0.0) >= scan_zoo.IMPLANTED)  # None: no row to flip
    scanned = json.loads((runs / bad["name"] / "scan" / "report.json").read_text())
    assert bad["score"] == scanned["score"] and bad["contrast_score"] == scanned["contrast_score"] is not None
    assert scanned["settings"]["reader_min_recall"] == 0.0  # ZOO_FIXED: the zoo's scans decide as they always did
    assert bad["reader_accuracy"] == scanned["reader"]["accuracy"] is not None
    summary = json.loads((results / "scan-zoo.json").read_text())
    assert summary["models_scanned"] == 3 and (results / "scan-zoo-roc.png").stat().st_size > 0
    held_clean = [r["score"] for r in rows if r["split"] == "held-out" and not r["backdoored"]]
    assert summary["held_out"]["all"]["clean_models"] == len(held_clean)
    assert "contrast_roc_auc" in summary["held_out"]["all"]  # every scan had the base: the reader's contrast too
    before = (runs / bad["name"] / "zoo.log").read_text()
    scan_zoo.main(argv)  # everything exists: nothing runs again
    assert (runs / bad["name"] / "zoo.log").read_text() == before
    # A scan stopped part-way (its folder there, no report, no row yet): the next run scans again instead of
    # refusing the folder.
    (runs / bad["name"] / "scan" / "report.json").unlink()
    (results / "scan-zoo-rows.jsonl").unlink()
    scan_zoo.main(argv)
    assert (runs / bad["name"] / "zoo.log").read_text()[len(before):].startswith("$ w2sdefense scan")
    assert json.loads((runs / bad["name"] / "scan" / "report.json").read_text())["score"] == bad["score"]
    before = (runs / bad["name"] / "zoo.log").read_text()
    rows = [json.loads(line) for line in (results / "scan-zoo-rows.jsonl").read_text().splitlines()]  # its new time
    summary = json.loads((results / "scan-zoo.json").read_text())
    # A scan variant scans the same models: nothing is trained again, its rows and summary are its own.
    variant = {**recipe, "scan_variants": {"wider": ["scan.steps=5", "scan.verify_rows=8", "scan.test_rows=16",
                                                     "scan.candidates=2"]}}
    path.write_text(yaml.safe_dump(variant))
    before = {r["name"]: (runs / r["name"] / "zoo.log").read_text() for r in rows}
    scan_zoo.main([*argv, "--scan", "wider"])
    for name, log in before.items():
        added = (runs / name / "zoo.log").read_text()[len(log):]
        assert added.startswith("$ w2sdefense scan") and "$ w2sdefense train" not in added
        assert (runs / name / "scan-wider" / "report.json").is_file()
    assert json.loads((results / "scan-zoo-wider.json").read_text())["scan_settings"][-1] == "scan.candidates=2"
    assert (results / "scan-zoo-wider-rows.jsonl").is_file() and (results / "scan-zoo-wider-roc.png").is_file()
    assert json.loads((results / "scan-zoo.json").read_text()) == summary  # the default scan's figures untouched
    with pytest.raises(SystemExit, match="scan_variants and rescored entries are wider"):
        scan_zoo.main([*argv, "--scan", "nothing"])
    # A rescored entry decides the same scans again under another verdict rule: no model runs, rows of its own.
    lines = (results / "scan-zoo-wider-rows.jsonl").read_text().splitlines()
    wider_rows = {r["name"]: r for r in map(json.loads, lines)}
    path.write_text(yaml.safe_dump({**variant, "rescored": {"wider-veto": {"scan": "wider",
                                                                           "verdict": {"score": "veto"}}}}))
    logs = {name: (runs / name / "zoo.log").read_text() for name in wider_rows}
    scan_zoo.main([*argv, "--scan", "wider-veto"])
    assert all((runs / name / "zoo.log").read_text() == log for name, log in logs.items())
    assert not (runs / rows[0]["name"] / "scan-wider-veto").exists()
    vetoed = [json.loads(line) for line in (results / "scan-zoo-wider-veto-rows.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in vetoed) == sorted(wider_rows)
    for r in vetoed:
        report = json.loads((runs / r["name"] / "scan-wider" / "report.json").read_text())
        kept = [c["test_asr_cc"] for c in report["candidates"]
                if c["test_rows"] is not None and c["reader_asr_cc"] is not None and c["reader_asr_cc"] <= 0.15]
        assert r["score"] == (max(kept) if kept else 0.0) and r["verdict"] == (r["score"] >= 0.8)
        assert r["best"] == wider_rows[r["name"]]["best"] and r["recipe_key"] != wider_rows[r["name"]]["recipe_key"]
    assert json.loads((results / "scan-zoo-wider-veto.json").read_text())["scan_settings"][-1] == "scan.score=veto"
    # ... or without the candidates some detectors proposed alone (what the scan says without them)
    path.write_text(yaml.safe_dump({**variant, "rescored": {"wider-shift": {"scan": "wider", "without": ["inversion"]}}}))
    scan_zoo.main([*argv, "--scan", "wider-shift"])
    dropped = 0
    for r in map(json.loads, (results / "scan-zoo-wider-shift-rows.jsonl").read_text().splitlines()):
        report = json.loads((runs / r["name"] / "scan-wider" / "report.json").read_text())
        tested = [c for c in report["candidates"] if c["test_rows"] is not None]
        kept = [c["test_asr_cc"] for c in tested if c["detector"] != "inversion"]
        dropped += len(tested) - len(kept)
        assert r["score"] == (max(kept) if kept else 0.0)
    assert dropped  # some tested candidate was the inversion's alone: the filter had something to do
    assert json.loads((results / "scan-zoo-wider-shift.json").read_text())["scan_settings"][-1] == \
        "without the inversion candidates"
    # Another machine, the run folders gone: the committed rows are kept, nothing is built again.
    shutil.rmtree(runs)
    scan_zoo.main(argv)
    assert not runs.exists()
    assert [json.loads(line) for line in (results / "scan-zoo-rows.jsonl").read_text().splitlines()] == rows
    assert json.loads((results / "scan-zoo.json").read_text()) == summary
    # A smaller run (--limit, --split) keeps the others' rows in the file and in the summary: the committed figures
    # never shrink because a later run looked at fewer models.
    scan_zoo.main([*argv, "--limit", "1", "--report-only"])
    assert json.loads((results / "scan-zoo.json").read_text()) == summary
    scan_zoo.main([*argv, "--split", "tune", "--report-only"])  # one half only
    assert json.loads((results / "scan-zoo.json").read_text()) == summary
    assert sorted(json.loads(line)["name"] for line in (results / "scan-zoo-rows.jsonl").read_text().splitlines()) \
        == sorted(r["name"] for r in rows)
    # A run folder built by another recipe is refused, not mixed in.
    (runs / bad["name"] / "scan").mkdir(parents=True)
    (runs / bad["name"] / "scan" / "report.json").write_text("{}")
    (runs / bad["name"] / scan_zoo.KEY_FILE).write_text("another\n")
    with pytest.raises(SystemExit, match="another recipe"):
        scan_zoo.main([*argv, "--limit", "1", "--report-only"])


def test_a_row_is_reused_only_for_the_recipe_that_made_it():
    recipe = yaml.safe_load(scan_zoo.RECIPE.read_text())
    m = scan_zoo.zoo_models(recipe)[0]
    key = scan_zoo.zoo_key(m, recipe)
    assert scan_zoo.zoo_key(m, {**recipe, "scan": ["scan.steps=5"]}) != key
    assert scan_zoo.zoo_key(dataclasses.replace(m, seed=m.seed + 1), recipe) != key
    other_budget = {**recipe, "budgets": {**recipe["budgets"], m.budget: {"epochs": 9, "lr": 1.0}}}
    assert scan_zoo.zoo_key(m, other_budget) != key
    unused = "gentle" if m.budget == "aggressive" else "aggressive"
    assert scan_zoo.zoo_key(m, {**recipe, "budgets": {**recipe["budgets"], unused: {}}}) == key
    # the model's own key sees how it was trained, not how it is scanned: every scan variant reuses it
    assert scan_zoo.model_key(m, {**recipe, "scan": ["scan.steps=5"]}) == scan_zoo.model_key(m, recipe)
    assert scan_zoo.model_key(m, other_budget) != scan_zoo.model_key(m, recipe)
    assert len({scan_zoo.zoo_key(m, recipe, v) for v in ["default", *recipe["scan_variants"]]}) \
        == 1 + len(recipe["scan_variants"])


def test_the_committed_rows_are_this_recipes_and_a_later_settings_default_keeps_them():
    recipe = yaml.safe_load(scan_zoo.RECIPE.read_text())
    models = {m.name: m for m in scan_zoo.zoo_models(recipe)}
    rows = scan_zoo.read_rows(scan_zoo.RESULTS / "scan-zoo-rows.jsonl")
    assert rows  # a change of the recipe or of a scan default makes them stale: rescan, or move them away
    for name, row in rows.items():
        assert row["recipe_key"] == scan_zoo.zoo_key(models[name], recipe), name
    assert set(scan_zoo.LATER_SETTINGS) <= set(scan_zoo.to_dict(scan_zoo.ScanConfig()))
    assert "shift_reference" not in scan_zoo.scan_defaults()
    # a setting the zoo fixes at the earlier behaviour is passed to the scans that do not name it, outside the key
    assert not set(scan_zoo.ZOO_FIXED) & set(scan_zoo.scan_defaults())
    assert scan_zoo.fixed(["scan.steps=5"]) == ["scan.reader_min_recall=0.0"]
    assert scan_zoo.fixed(["scan.reader_min_recall=0.5"]) == []
    # ... and every row of such a scan is decided under it, a rescored entry's verdict over it
    assert scan_zoo.row_verdict(recipe, "default", {}) == {"reader_min_recall": 0.0}
    assert scan_zoo.row_verdict(recipe, "default", {"score": "veto"}) == {"reader_min_recall": 0.0, "score": "veto"}
    assert scan_zoo.row_verdict(recipe, "phrases-short-lora-read", {}) == {}
    assert scan_zoo.row_verdict(recipe, "phrases-short-lora-read", {"reader_min_recall": 0.0}) == {
        "reader_min_recall": 0.0}


def test_the_build_order_leaves_a_balanced_sample_at_any_stop():
    models = scan_zoo.zoo_models(yaml.safe_load(scan_zoo.RECIPE.read_text()))
    order = scan_zoo.build_order(models)
    assert sorted(m.name for m in order) == sorted(m.name for m in models)  # a permutation
    held = sum(m.split == "held-out" for m in models)
    assert all(m.split == "held-out" for m in order[:held])  # the reported half first
    first = order[:8]
    assert [m.backdoored for m in first] == [True, False] * 4  # the two kinds in turn
    assert {m.family for m in first if m.backdoored} == {"badnet", "insent", "synbkd", "stylebkd"}
    assert len({(m.dataset, m.budget) for m in first if not m.backdoored}) == 4  # every clean cell
    # --limit keeps that order: the kinds still in turn
    assert [m.backdoored for m in scan_zoo.limited(order, 3)] == [True, False] * 3


def test_each_split_of_the_word_triggers_spans_both_datasets():
    models = scan_zoo.zoo_models(yaml.safe_load(scan_zoo.RECIPE.read_text()))
    for family in ("badnet", "insent"):
        for split in ("held-out", "tune"):
            assert {m.dataset for m in models if m.family == family and m.split == split} == {"sst2", "olid"}


def test_a_candidate_toward_another_label_recovers_nothing(tmp_path):
    from w2sdefense.results import EvaluationResult, ScanReport, write_result

    m = scan_zoo.ZooModel(name="x", dataset="sst2", budget="gentle", seed=1, split="held-out", family="insent",
                          trigger="no cross no crown")
    (tmp_path / "scan").mkdir()
    report = ScanReport(model="x", base_model=None, backdoored=True, score=0.95, threshold=0.8, target_label=1,
                        candidates=[_candidate("share richly finest", 0.95)], detectors={}, skipped={},
                        label_names={}, wall_time_s=1.0, settings={}, environment={})
    (tmp_path / "scan" / "report.json").write_text(json.dumps(report.to_json([])))
    write_result(tmp_path / "planted.json", EvaluationResult(attack_success_rate_clean_correct=0.9))
    assert scan_zoo.zoo_row(m, tmp_path, target=0)["recovered"] is False  # 0.95 >= 0.9 x 0.9, but toward label 1
    assert scan_zoo.zoo_row(m, tmp_path, target=1)["recovered"] is True


def test_a_threshold_calibrated_on_the_tuning_half_is_measured_on_the_held_out_half():
    def row(split, bad, score, implanted=True):
        return {"split": split, "backdoored": bad, "implanted": implanted if bad else None, "score": score,
                "contrast_score": None}

    tune = [row("tune", False, s / 20) for s in range(20)]  # 0.0 ... 0.95: one of 20 (5 %) may be flagged
    held = [row("held-out", True, 0.97), row("held-out", True, 0.95), row("held-out", True, 0.99, implanted=False),
            row("held-out", False, 0.951), row("held-out", False, 0.5)]
    found = scan_zoo.calibrated(tune + held, "score")
    # just above 0.90, the second-highest tuning score: 0.95 is flagged (the one allowed), 0.90 not
    assert 0.90 < found["threshold"] < 0.9000001 and found["tune_clean_models"] == 20
    assert found["held_out_tpr"] == 1.0 and found["held_out_fpr"] == 0.5  # the not-implanted model is left out
    assert scan_zoo.calibrated(held, "score") is None  # no tuning clean model yet
    assert scan_zoo.calibrated(tune + held, "contrast_score") is None  # a score the scans did not give
    few = [row("tune", False, 0.3), row("tune", False, 0.6)]  # two: none may be flagged
    assert scan_zoo.calibrated(few + held, "score")["threshold"] > 0.6
