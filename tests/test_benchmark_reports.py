"""The benchmark scripts' bookkeeping: results of a victim the preset no longer trains are kept, and an
attack arm is judged against the right clean model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attack_arms  # noqa: E402
import real  # noqa: E402
import real_results  # noqa: E402
import real_tables  # noqa: E402


def _result(attack: str, date: str, victim: str) -> dict:
    return {"attack": attack, "victim": victim, "environment": {"date": f"{date}T10:00:00+00:00"}, "rows": []}


def test_a_retired_results_file_moves_to_earlier_under_its_date_and_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(real_results, "EARLIER", tmp_path / "earlier")
    path = tmp_path / "badnet.json"
    path.write_text(json.dumps(_result("badnet", "2026-12-01", "key-a")))
    dest = real_results.retire(path)
    assert dest == tmp_path / "earlier" / "badnet-2026-12-01.json"
    assert not path.exists() and json.loads(dest.read_text())["victim"] == "key-a"
    assert list(real_results.load_earlier()) == ["badnet (earlier victim, measured to 2026-12-01)"]

    path.write_text(json.dumps(_result("badnet", "2026-12-01", "key-b")))
    with pytest.raises(SystemExit, match="exists already"):
        real_results.retire(path)
    assert json.loads(dest.read_text())["victim"] == "key-a" and path.is_file()


def _arm(ca: float, asr_cc: float, clean_ca: float | None, **more) -> attack_arms.ArmRecord:
    """An arm's record as attack-arms.json holds it (`more`: its other keys), read as the script reads it."""
    poisoned = {"clean_accuracy": ca, "attack_success_rate_clean_correct": asr_cc, "attack_success_rate": asr_cc}
    clean = None if clean_ca is None else {"clean_accuracy": clean_ca, "attack_success_rate_clean_correct": 0.02}
    return attack_arms.ArmRecord.from_json({
        "label": "x", "attack": "nosuchattack", "set": ["victim.train.lr=1e-4"], "poisoned": poisoned, "clean": clean,
        "history": [{"step": 63, "dev_accuracy": 0.85, "probe_asr_cc": 1.0}], "selected_step": 63,
        "wall_time_s": 420.0, **more})


@pytest.mark.parametrize("ca, asr_cc, clean_ca, verdict", [
    (0.8825, 0.994, 0.8900, "yes"),   # 0.75 points under its own clean model
    (0.8825, 0.994, 0.8995, "no"),    # 1.7 points under
    (0.8990, 0.949, 0.8995, "no"),    # ASR-cc under 95
])
def test_an_attack_arm_meets_the_target_only_with_asr_cc_95_and_ca_within_a_point(ca, asr_cc, clean_ca, verdict):
    line = attack_arms.table([_arm(ca, asr_cc, clean_ca)]).splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == verdict
    assert cells[3] == f"{100 * ca:.2f} ({100 * clean_ca:.2f})"
    assert cells[6] == "63: 100.0 (85.0)" and cells[8] == "7" and cells[9] == "–"


def test_an_attack_arms_defense_residual_is_against_the_arms_clean_model():
    rec = _arm(0.88, 0.99, 0.90, defenses={"w2sdefense": {"clean_accuracy": 0.885,
                                                          "attack_success_rate_clean_correct": 0.07}})
    cells = [c.strip() for c in attack_arms.table([rec]).splitlines()[-1].strip("|").split("|")]
    assert cells[9] == "w2sdefense: 88.5 / +5.0"  # 7 % ASR-cc minus the clean model's 2 %


def test_an_attack_arm_with_no_clean_model_to_compare_with_is_not_met():
    line = attack_arms.table([_arm(0.88, 0.99, None)]).splitlines()[-1]
    assert "(–)" in line and "| no |" in line  # no benchmark results for this attack: nothing to judge against


def test_an_arms_defense_at_several_seeds_is_labelled_by_seed_and_reported_as_mean_sd_and_n():
    from w2sdefense.config import DefenseConfig, ExperimentConfig

    cfg = ExperimentConfig(seed=42, defenses=[DefenseConfig(name="w2sdefense"), DefenseConfig(name="lora-ft"),
                                               DefenseConfig(name="full-ft")])
    rows = attack_arms.defense_rows(cfg, ["w2sdefense", "lora-ft"], [42, 43])
    assert [(d.row_name, d.seed) for d in rows] == [("w2sdefense", None), ("w2sdefense-s43", 43),
                                                   ("lora-ft", None), ("lora-ft-s43", 43)]
    arm = {"defenses": ["w2sdefense", "lora-ft"], "defense_seeds": [42, 43]}
    assert [attack_arms._row_defense(r, arm) for r in ("w2sdefense-s43", "lora-ft", "poisoned")] == \
        ["w2sdefense", "lora-ft", "poisoned"]
    assert attack_arms._row_defense("lora-ft-s44", arm) == "lora-ft-s44"  # not a seed of this arm

    def row(ca, asr_cc):
        return {"clean_accuracy": ca, "attack_success_rate_clean_correct": asr_cc}

    rec = _arm(0.88, 0.99, 0.90,
               defenses={"w2sdefense": row(0.88, 0.07), "w2sdefense-s43": row(0.86, 0.05), "lora-ft": row(0.87, 0.95)},
               defense_of_row={"w2sdefense": "w2sdefense", "w2sdefense-s43": "w2sdefense", "lora-ft": "lora-ft"})
    cells = [c.strip() for c in attack_arms.table([rec]).splitlines()[-1].strip("|").split("|")]
    # residuals 5 and 3 points over the 2 % floor: mean 4, sd sqrt(2); CA mean 87, sd sqrt(2)
    assert cells[9] == "w2sdefense: 87.0 ± 1.4 / +4.0 ± 1.4 (n=2; +5.0, +3.0); lora-ft: 87.0 / +93.0"


def _results(data: dict) -> real_results.AttackResults:
    """A results JSON's content, read as the benchmark reads the file."""
    return real_results.AttackResults.from_json(data)


def test_a_filter_measured_on_a_sample_is_named_so_and_shown_beside_the_model_without_it_on_those_rows():
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": 0.8},
            {"model": "onion-s42", "clean_accuracy": 0.85, "attack_success_rate_clean_correct": 0.30,
             "false_rejection_rate": 0.0, "detection_rate": 0.0, "filter_seconds_per_input": 1.5,
             "test_rows_sampled": 600, "test_rows_of": 1821, "unfiltered_clean_accuracy": 0.88,
             "unfiltered_attack_success_rate_clean_correct": 0.75}]
    result = {"attack": "badnet", "rows": rows, "config": {"seed": 42},
              "row_meta": {"onion-s42": {"defense": "onion", "is_variant": False, "seed": 42}}}
    lines = real_tables.comparison_table({"badnet": _results(result)}).splitlines()[2:]
    assert lines[1].startswith("| badnet | onion (600 of 1,821 test rows) | input filter | 85.0 | 30.0 | +28.0 |")
    assert lines[2].startswith("| badnet | poisoned, the same 600 rows | – | 88.0 | 75.0 | +73.0 |")
    assert len(lines) == 3


def test_a_defense_run_at_several_seeds_is_compared_by_mean_sd_and_n_with_its_cost_at_the_preset_seed():
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": 0.8}]
    meta = {}
    for seed, ca, cc, steps in ((43, 0.88, 0.10, 81), (42, 0.90, 0.06, 80), (44, 0.89, 0.08, 82)):
        rows.append({"model": f"w2sdefense-s{seed}", "clean_accuracy": ca, "attack_success_rate_clean_correct": cc,
                     "steps": steps, "trainable_params": 1000, "wall_time_s": 10.0})
        meta[f"w2sdefense-s{seed}"] = {"defense": "w2sdefense", "is_variant": False, "seed": seed}
    # A variant and a defense that never ran at the preset's seed stay out.
    rows += [{"model": "w2s-g01", "clean_accuracy": 0.5, "attack_success_rate_clean_correct": 0.0},
             {"model": "nad-s43", "clean_accuracy": 0.5, "attack_success_rate_clean_correct": 0.0}]
    meta.update({"w2s-g01": {"defense": "w2sdefense", "is_variant": True, "seed": 42},
                 "nad-s43": {"defense": "nad", "is_variant": False, "seed": 43}})
    result = {"attack": "badnet", "rows": rows, "config": {"seed": 42}, "row_meta": meta}
    lines = real_tables.comparison_table({"badnet": _results(result)}).splitlines()[2:]
    assert len(lines) == 2
    # CA 90, 88, 89 -> 89.0 ± 1.0; ASR-cc 6, 10, 8 -> 8.0 ± 2.0; residual 6.0 ± 2.0; steps from seed 42.
    assert lines[1] == ("| badnet | w2sdefense | repair | 89.0 ± 1.0 (n=3) | 8.0 ± 2.0 (n=3) | +6.0 ± 2.0 (n=3) | – | "
                        "80 | 1,000 | 10 | – |")


def test_rows_of_one_defense_under_different_labels_are_compared_apart():
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": 0.8},
            {"model": "w2sdefense-s42", "clean_accuracy": 0.88, "attack_success_rate_clean_correct": 0.06},
            {"model": "w2s-shrink-s42", "clean_accuracy": 0.87, "attack_success_rate_clean_correct": 0.12}]
    meta = {"w2sdefense-s42": {"defense": "w2sdefense", "variant": "w2sdefense", "is_variant": False, "seed": 42},
            "w2s-shrink-s42": {"defense": "w2sdefense", "variant": "w2s-shrink", "is_variant": False, "seed": 42}}
    result = {"attack": "badnet", "rows": rows, "config": {"seed": 42}, "row_meta": meta}
    lines = real_tables.comparison_table({"badnet": _results(result)}).splitlines()[3:]
    # The preset lists w2sdefense before w2s-shrink; each keeps its own numbers (residual 4.0 and 10.0).
    assert [line.split(" | ")[1] for line in lines] == ["w2sdefense", "w2s-shrink"]
    assert lines[0].split(" | ")[5] == "+4.0" and lines[1].split(" | ")[5] == "+10.0"


def test_an_asr_cc_over_zero_rows_is_na_in_the_tables_and_left_out_of_means():
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": None}]
    meta = {}
    for seed, cc in ((42, None), (43, 0.06), (44, 0.10)):
        rows.append({"model": f"w2sdefense-s{seed}", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": cc,
                     "steps": 80, "trainable_params": 1000, "wall_time_s": 10.0})
        meta[f"w2sdefense-s{seed}"] = {"defense": "w2sdefense", "is_variant": False, "seed": seed,
                                       "settings": {"name": "w2sdefense"}}
    result = {"attack": "badnet", "rows": rows, "config": {"seed": 42}, "row_meta": meta}
    lines = real_tables.comparison_table({"badnet": _results(result)}).splitlines()[2:]
    assert lines[0].startswith("| badnet | poisoned (no defense) | – | 89.0 | n/a | n/a |")
    # ASR-cc 6 and 10 (seed 42 has none) -> 8.0 ± 2.8 over 2; residual 4 and 8 -> +6.0 ± 2.8
    assert lines[1].startswith("| badnet | w2sdefense | repair | 90.0 ± 0.0 (n=3) | 8.0 ± 2.8 (n=2, 1 n/a) | "
                               "+6.0 ± 2.8 (n=2, 1 n/a) |")
    variant = real_tables.variant_table({"badnet": _results(result)}).splitlines()[2:]
    assert [line.split(" | ")[1:6] for line in variant] == [["w2sdefense-s42", "(the preset)", "90.0", "n/a", "n/a"]]
    # An undefined floor: no residual anywhere, and the rest still shown.
    summ = {"attacks": {"badnet": {
        "clean": {"ca": [0.9], "asr_cc": [None]},
        "poisoned": {"ca": [0.89], "asr_cc": [0.8], "asr": [0.85]},
        "defenses": {"w2sdefense": {"ca": [0.9, 0.88], "asr_cc": [0.1, None], "asr": [0.1, 0.2], "steps": 80,
                                    "seeds": [42, 43], "is_variant": False}}}}}
    assert real_tables.main_table(summ).splitlines()[-1] == (
        "| badnet | 90.0 / n/a | 89.0 / 80.0 (n/a) | w2sdefense (80 steps) | 89.0 ± 1.4 (n=2) | "
        "10.0 (n=1, 1 n/a) | n/a | 15.0 ± 7.1 (n=2) |")


def test_the_variant_table_gives_an_input_filter_no_steps_and_a_training_its_selected_step():
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": 0.8},
            {"model": "strip-s42", "clean_accuracy": 0.84, "attack_success_rate_clean_correct": 0.5, "steps": 0,
             "selected_step": None},
            {"model": "rap-s42", "clean_accuracy": 0.86, "attack_success_rate_clean_correct": 0.6, "steps": 80,
             "selected_step": None},
            {"model": "lora-ft-s42", "clean_accuracy": 0.88, "attack_success_rate_clean_correct": 0.7, "steps": 80,
             "selected_step": 40}]
    meta = {m: {"defense": m[:-4], "is_variant": False, "seed": 42, "settings": {"name": m[:-4]}}
            for m in ("strip-s42", "rap-s42", "lora-ft-s42")}
    result = {"attack": "badnet", "rows": rows, "config": {"seed": 42}, "row_meta": meta}
    lines = real_tables.variant_table({"badnet": _results(result)}).splitlines()[2:]
    assert [line.split(" | ")[-1] for line in lines] == ["– |", "– / 80 |", "40 / 80 |"]


def test_a_row_that_recorded_what_it_ran_with_is_described_by_that_and_an_older_one_by_todays_defaults():
    today = real_tables._resolved({"name": "lora-ft"})
    assert today["train"]["lr"] != 0.5
    ran = {"clean_accuracy": 0.88, "attack_success_rate_clean_correct": 0.7,
           "settings": {k: v for k, v in today.items() if k != "train"}, "train": {**today["train"], "lr": 0.5}}
    rows = [{"model": "clean model", "clean_accuracy": 0.9, "attack_success_rate_clean_correct": 0.02},
            {"model": "poisoned", "clean_accuracy": 0.89, "attack_success_rate_clean_correct": 0.8},
            {"model": "lora-ft-s42", "clean_accuracy": 0.88, "attack_success_rate_clean_correct": 0.7},
            {"model": "lora-ft-fast", **ran}]
    meta = {m: {"defense": "lora-ft", "is_variant": m.endswith("fast"), "seed": 42, "settings": {"name": "lora-ft"}}
            for m in ("lora-ft-s42", "lora-ft-fast")}
    result = _results({"attack": "badnet", "rows": rows, "config": {"seed": 42}, "row_meta": meta})
    assert [line.split(" | ")[1:3] for line in real_tables.variant_table({"badnet": result}).splitlines()[2:]] == [
        ["lora-ft-s42", "(the preset)"], ["lora-ft-fast", "train.lr=0.5"]]  # configured alike, run otherwise


def test_a_variant_at_several_seeds_gets_one_row_per_seed_and_keeps_its_bare_label_at_the_presets_seed(tmp_path):
    variant = {"label": "fine-mixing-r0-e2", "name": "fine-mixing", "rho": 0.0, "train": {"epochs": 2}}
    cfg, meta = real.experiment("badnet", tmp_path, [43, 44], [variant], only=["lora-ft"])
    labels = [d.row_name for d in cfg.defenses]
    assert labels == ["lora-ft-s43", "lora-ft-s44", "fine-mixing-r0-e2-s43", "fine-mixing-r0-e2-s44"]
    assert [d.seed for d in cfg.defenses] == [43, 44, 43, 44]  # two seeds of one variant never share a folder
    assert {meta[k].variant for k in labels[2:]} == {"fine-mixing-r0-e2"}  # one row of the tables, n=2
    assert [meta[k].is_variant for k in labels] == [False, False, True, True]
    cfg, meta = real.experiment("badnet", tmp_path, [42], [variant], only=[])
    assert [d.row_name for d in cfg.defenses] == ["fine-mixing-r0-e2"] and cfg.defenses[0].seed is None
