"""The family matrix: a user's checkpoint of each common family, saved with `save_pretrained`, goes through
`run` (victim, teacher, every defense but ONION, whose LM is its own setting) as student, and the encoder
families as teacher and as victim. The README's support table lists exactly these families."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from cli_helpers import REPO, run_cli
from families import DECODERS, ENCODERS, every_defense, save_family, word_data

from w2sdefense.results import read_report



def _run(tmp_path: Path, victim: Path, teacher: str) -> dict:
    config = {
        "name": "family", "output_dir": str(tmp_path / "run"), "seed": 5,
        "data": {"dataset": str(word_data(tmp_path / "data", 128, 32, 32))},
        "attack": {"name": "badnet"}, "poison": {"target_label": 0, "count": 20},
        "victim": {"model": str(victim), "train": {"method": "full", "epochs": 1, "lr": 3.0e-3, "batch_size": 16,
                                                   "max_length": 32}},
        "teacher": {"model": teacher, "train": {"epochs": 1, "lr": 1.0e-3, "max_length": 32}},
        "defenses": every_defense(str(victim)),
        "eval": {"batch_size": 32, "max_length": 32, "probe_rows": 16},
    }
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), env={"W2S_DATA_DIR": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = read_report(tmp_path / "run")
    names = [r.model for r in report.rows]
    assert names == ["poisoned", "teacher", *[d.get("label") or d["name"] for d in config["defenses"]]]
    for row in report.rows:
        assert math.isfinite(row.clean_accuracy) and math.isfinite(row.attack_success_rate), row.model
    return report


@pytest.mark.parametrize("family", list(DECODERS))
def test_a_decoder_family_runs_every_stage_and_defense_as_the_student(family, tmp_path):
    victim = save_family(family, tmp_path / "base")
    report = _run(tmp_path, victim, "tiny-bert")
    pruned = json.loads((tmp_path / "run" / "defenses" / "fine-pruning" / "metrics.json").read_text())
    # The last two layers' MLP output projections, 20 % of their 128 neurons each; each has an adapter to mask.
    assert pruned["pruned_neurons"] == [25, 25] and pruned["pruned_adapters_masked"] == 2
    assert report.rows[0].clean_total == 32


@pytest.mark.parametrize("family", list(ENCODERS))
def test_an_encoder_family_is_a_teacher_and_a_victim(family, tmp_path):
    victim = save_family(family, tmp_path / "base")
    _run(tmp_path, victim, str(victim))
    assert json.loads((tmp_path / "run" / "teacher" / "metrics.json").read_text())["feature_dim"] == 64


def test_the_readme_support_table_lists_the_tested_families():
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- families:begin -->")[1].split("<!-- families:end -->")[0]
    listed = re.findall(r"^\| ([^|]+?) \|", table, flags=re.M)[1:]  # past the header
    assert listed == [*DECODERS, *ENCODERS]
