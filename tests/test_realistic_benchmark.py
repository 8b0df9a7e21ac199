"""The realistic protocol's harness (benchmarks/realistic.py): its flat rows, their table, and one real run of
the script on tiny models that leaves the rows a reader recomputes the table from."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realistic  # noqa: E402
import realistic_report  # noqa: E402

from w2sdefense.config import ExperimentConfig  # noqa: E402
from w2sdefense.results import ExperimentReport, ReportRow, read_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _report(**changed: ReportRow) -> ExperimentReport:
    """A run's report with made-up rows (`changed`: rows to put in by name)."""
    rows = {"clean model": ReportRow(clean_accuracy=0.90, attack_success_rate_clean_correct=0.04, wall_time_s=10.0,
                                     steps=5),
            "poisoned": ReportRow(clean_accuracy=0.88, attack_success_rate_clean_correct=0.99),
            "reset": ReportRow(clean_accuracy=0.86, attack_success_rate_clean_correct=0.07, wall_time_s=30.0,
                               steps=160, selected_step=120),
            "reset+relearn": ReportRow(clean_accuracy=0.85, attack_success_rate_clean_correct=0.20),
            "clean+relearn": ReportRow(clean_accuracy=0.89, attack_success_rate_clean_correct=0.10), **changed}
    return ExperimentReport(rows=[dataclasses.replace(row, model=name) for name, row in rows.items()])


def test_a_flat_row_carries_the_floor_the_suspect_and_the_relearning_test_of_its_own_report():
    arm = {"label": "reset", "base_known": True}
    row = realistic.flat_row("insent", arm, 256, 43, _report())
    assert row == {"attack": "insent", "defense": "reset", "k": 256, "seed": 43, "base_known": True, "ca": 0.86,
                   "asr_cc": 0.07, "floor_asr_cc": 0.04, "suspect_ca": 0.88, "suspect_asr_cc": 0.99, "clean_ca": 0.90,
                   "relearn_asr_cc": 0.20, "floor_relearn_asr_cc": 0.10, "stage_s": 30.0, "steps": 160,
                   "selected_step": 120, "stage_key": None}
    clean = realistic.clean_model_row("insent", _report())
    assert clean["defense"] == "clean-model" and clean["relearn_asr_cc"] == clean["floor_relearn_asr_cc"] == 0.10
    # An arm's teacher, measured as a model of its own, reads the report's teacher row (no re-learning test of its own).
    assert realistic.teacher_arm(arm) is None
    teacher = realistic.teacher_arm({**arm, "teacher_row": "distil-minilm"})
    report = _report(teacher=ReportRow(clean_accuracy=0.84, attack_success_rate_clean_correct=0.05, wall_time_s=9.0,
                                       steps=80, selected_step=80))
    row = realistic.flat_row("insent", teacher, 256, 43, report)
    assert row["defense"] == "distil-minilm" and row["base_known"] is False
    assert (row["ca"], row["asr_cc"], row["stage_s"], row["relearn_asr_cc"]) == (0.84, 0.05, 9.0, None)


def test_recording_a_row_again_replaces_it_and_the_table_takes_means_of_differences(tmp_path):
    path = tmp_path / "rows.jsonl"
    arm = {"label": "reset", "base_known": True}
    report = _report()
    realistic.record({**realistic.flat_row("insent", arm, 256, 42, report), "date": "first"}, path)
    realistic.record({**realistic.flat_row("insent", arm, 256, 42, report), "date": "second"}, path)
    assert [json.loads(line)["date"] for line in path.read_text().splitlines()] == ["first"]  # same measurements
    report = _report(reset=dataclasses.replace(report.row("reset"), attack_success_rate_clean_correct=0.11,
                                               clean_accuracy=0.84))
    realistic.record(realistic.flat_row("insent", arm, 256, 43, report), path)
    realistic.record(realistic.clean_model_row("insent", report), path)
    read = realistic_report.read_rows(path)
    assert len(read) == 3
    table = realistic_report.table(read)
    # residuals +3.0 and +7.0 points: mean +5.0, sd 2.8; CA against the suspect's -2.0 and -4.0
    line = next(line for line in table.splitlines() if "| reset |" in line)
    assert "+5.0 ± 2.8 (n=2)" in line and "-3.0 ± 1.4 (n=2)" in line
    assert "+10.0 ± 0.0 (n=2)" in line  # re-learning: 0.20 - 0.10 at both seeds
    assert "| insent | – | clean model (floor) |" in table


def test_the_readme_block_holds_the_arms_with_three_seeds_on_both_attacks_by_hand(tmp_path):
    path = tmp_path / "rows.jsonl"
    reset, other = {"label": "reset", "base_known": True}, {"label": "lora-ft", "base_known": False}
    for attack in ("badnet", "insent"):
        realistic.record(realistic.clean_model_row(attack, _report()), path)
        for seed, asr in zip((42, 43, 44), (0.07, 0.05, 0.03)):  # residuals +3, +1, -1 points: mean +1.0, sd 2.0
            report = _report(reset=dataclasses.replace(_report().row("reset"), attack_success_rate_clean_correct=asr))
            realistic.record(realistic.flat_row(attack, reset, 256, seed, report), path)
    for seed in (42, 43, 44):  # lora-ft: three seeds on BadNet, none on InSent: not in the block
        realistic.record(realistic.flat_row("badnet", other, 256, seed, _report(**{"lora-ft": _report().row("reset")})),
                         path)
    block = realistic_report.headline(realistic_report.read_rows(path))
    lines = block.splitlines()
    assert "lora-ft" not in block and sum(line.startswith("| ") for line in lines) == 4  # head, 2 baselines, 1 arm
    arm = next(line for line in lines if line.startswith("| reset |"))
    # each attack: residual +1.0 ± 2.0, CA 0.86 - 0.88 = -2.0 points, re-learned ASR-cc 20.0 %
    assert arm.count("+1.0 ± 2.0 (n=3) (CA -2.0; 20.0 %)") == 2
    assert "| the suspect, no defense | +95.0 (CA 88.0 %) | +95.0 (CA 88.0 %) |" in block  # 0.99 - 0.04
    assert "| a clean model of the same recipe (the floor) | +0.0 (CA +2.0; 10.0 %) |" in block


def test_rows_written_before_rows_carried_a_stage_key_get_it_from_their_stage_folder(tmp_path, monkeypatch):
    arms = [{"label": "reset", "base_known": True}, {"label": "w2s-t", "base_known": False, "set": ["x=1"],
                                                      "teacher_row": "distil"}]
    monkeypatch.setattr(realistic, "read_arms", lambda: arms)
    runs, rows = tmp_path / "runs", tmp_path / "rows.jsonl"
    stages = {"reset": "realistic/insent/k256-s42/defenses/reset", "distil": "realistic/insent/k256-s42-w2s-t/teacher",
              "clean-model": "realistic/insent/suspect/clean"}
    for n, (defense, folder) in enumerate(stages.items()):
        (runs / folder).mkdir(parents=True)
        (runs / folder / "stage.json").write_text(json.dumps({"key": f"key{n}"}))
    written = [{"attack": "insent", "defense": d, "k": 256, "seed": 42} for d in ("reset", "distil")]
    written += [{"attack": "insent", "defense": "clean-model", "k": None, "seed": None},
                {"attack": "insent", "defense": "lost", "k": 256, "seed": 42},
                {"attack": "insent", "defense": "reset", "k": 256, "seed": 43, "stage_key": "kept"}]
    rows.write_text("".join(json.dumps(r) + "\n" for r in written))
    realistic.fill_stage_keys(runs, rows)
    keys = [json.loads(line).get("stage_key") for line in rows.read_text().splitlines()]
    assert keys == ["key0", "key1", "key2", None, "kept"]  # a row with no folder here stays without one


def test_an_arm_runs_at_its_k_and_seed_with_the_protocols_step_budget():
    cfg = realistic.preset("insent", Path("runs"))
    arm = next(a for a in realistic.read_arms() if a["label"] == "reset-distill")
    one = realistic.arm_config(cfg, arm, 64, 44, Path("x"))
    assert isinstance(one, ExperimentConfig) and one.defender.rows == 64 and one.defender.seed == 44
    (d,) = one.defenses
    assert d.label == "reset-distill" and d.seed == 44 and d.train["max_steps"] == realistic.MAX_STEPS
    # k = 64: dev every eval_every steps, not at each of its 40 epochs' ends; k = 256 reads them, as its rows were made
    assert d.train["eval_every"] == realistic.EVAL_EVERY and d.train["eval_epochs"] is False
    assert "eval_epochs" not in realistic.arm_config(cfg, arm, 256, 44, Path("x")).defenses[0].train
    assert one.data.max_train == 4000 and one.poison.count == 580 and one.relearn.rows == 64
    assert {a["label"] for a in realistic.read_arms()} >= {"base-fresh-head", "reset", "lora-ft", "w2sdefense"}
    # an arm that names its own budget keeps it (and only that arm)
    long = next(a for a in realistic.read_arms() if a["label"] == "distill-into-gemma-long")
    (d,) = realistic.arm_config(cfg, long, 256, 42, Path("x")).defenses
    assert d.train["max_steps"] == 3 * realistic.MAX_STEPS and d.train["eval_every"] == 80
    assert d.train["lr"] == 1.0e-3 and long["defense"]["train"]["max_steps"] == 480  # the arm's entry is not consumed


def test_the_script_on_tiny_models_leaves_the_clean_models_row_and_one_arms_row(tmp_path, small_data):
    arms = tmp_path / "arms.yaml"
    arms.write_text("- {label: reset, base_known: true, question: q, defense: {name: fine-mixing, "
                    "base_model: tiny-llama, train: {lora: {r: 4, alpha: 8}}}}\n")
    sets = ["data.max_train=200", "poison.count=30", "victim.model=tiny-llama", "defender.unlabelled=16",
            "relearn.rows=16", "relearn.poisoned=2", "eval.probe_rows=10", "data.max_dev=32", "data.max_test=48"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "realistic.py"), "--attacks", "badnet", "--ks", "16",
           "--seeds", "1", "--runs", str(tmp_path / "runs"), "--arms-file", str(arms), "--rows",
           str(tmp_path / "rows.jsonl"), *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "W2S_DATA_DIR": str(small_data)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["defense"], r["k"], r["seed"]) for r in rows] == [("clean-model", None, None), ("reset", 16, 1)]
    report = read_report(tmp_path / "runs" / "realistic" / "badnet" / "k16-s1")
    assert rows[1]["ca"] == report.row("reset").clean_accuracy and rows[1]["steps"] == realistic.MAX_STEPS
    assert rows[1]["floor_asr_cc"] == report.row("clean model").attack_success_rate_clean_correct
    assert report.row("reset+relearn") is not None
    # The arm's row carries what it ran with: its stage keys and its recipe and settings in full
    reset = report.row("reset")
    assert reset.train["max_steps"] == realistic.MAX_STEPS and reset.settings["base_model"] == "tiny-llama"
    assert reset.stage_key and reset.eval_key and reset.stage_key != reset.eval_key
    suspect = tmp_path / "runs" / "realistic" / "badnet" / "suspect" / "victim" / "stage.json"
    linked = tmp_path / "runs" / "realistic" / "badnet" / "k16-s1" / "victim" / "stage.json"
    assert os.path.samefile(suspect, linked)  # shared by hard link, not trained again
    # Each row is identified by the key of the stage that made its model (the hash of its resolved settings)
    stage = tmp_path / "runs" / "realistic" / "badnet" / "k16-s1" / "defenses" / "reset" / "stage.json"
    assert rows[1]["stage_key"] == reset.stage_key == json.loads(stage.read_text())["key"]
    clean = tmp_path / "runs" / "realistic" / "badnet" / "suspect" / "clean" / "stage.json"
    assert rows[0]["stage_key"] == json.loads(clean.read_text())["key"]


def test_the_clean_model_is_shared_with_an_attack_run_in_another_invocation(tmp_path):
    from realistic import share_clean

    trained = tmp_path / "realistic" / "badnet" / "suspect" / "clean"
    trained.mkdir(parents=True)
    (trained / "stage.json").write_text('{"key": "k"}')
    (trained / "weights").write_text("w")
    insent = tmp_path / "realistic" / "insent" / "suspect"
    insent.mkdir(parents=True)
    share_clean(insent)
    assert (insent / "clean" / "weights").read_text() == "w"
    assert (insent / "clean" / "weights").stat().st_ino == (trained / "weights").stat().st_ino  # a link, no copy
    unfinished = tmp_path / "realistic" / "synbkd" / "suspect"
    (tmp_path / "realistic" / "badnet" / "suspect" / "clean" / "stage.json").unlink()
    (insent / "clean" / "stage.json").unlink()
    unfinished.mkdir(parents=True)
    share_clean(unfinished)  # no finished clean model anywhere: nothing is shared
    assert not (unfinished / "clean").exists()
