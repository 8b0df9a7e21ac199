"""The bf16 path every GPU run takes, on CPU: `runtime.precision=bf16` loads weights in bf16 under bf16
autocast. Every stage and every defense runs on tiny models, with gradient checkpointing off and on, and
what they save is in bf16 (adapters in the dtype PEFT gives them); losses and metrics stay finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from cli_helpers import run_cli
from families import every_defense, word_data

from w2sdefense.results import read_report

DEFENSES = every_defense("tiny-llama")


def _dtypes(folder: Path) -> set[str]:
    found = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            found |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    return found


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_every_stage_and_defense_runs_in_bf16(tmp_path, checkpointing):
    config = {
        "name": "tiny-bf16", "output_dir": str(tmp_path / "run"), "seed": 3,
        "runtime": {"device": "cpu", "precision": "bf16", "gradient_checkpointing": checkpointing},
        "data": {"dataset": str(word_data(tmp_path / "data", 160, 32, 48))},
        "attack": {"name": "badnet"}, "poison": {"target_label": 0, "count": 24},
        "victim": {"model": "tiny-llama", "train": {"method": "full", "epochs": 2, "lr": 3.0e-3, "batch_size": 16,
                                                    "max_length": 32}},
        "clean_model": True,
        "teacher": {"model": "tiny-bert", "train": {"epochs": 1, "lr": 1.0e-3, "max_length": 32}},
        "defenses": DEFENSES,
        "eval": {"batch_size": 32, "max_length": 32, "probe_rows": 16},
    }
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), env={"W2S_DATA_DIR": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "run"
    report = read_report(run)
    names = [r.model for r in report.rows]
    assert names == ["clean model", "poisoned", "teacher", *[d.get("label") or d["name"] for d in DEFENSES]]
    for row in report.rows:
        for value in (row.clean_accuracy, row.attack_success_rate):
            assert value is not None and math.isfinite(value), row.model
    # Full weights are saved in bf16; an adapter keeps the dtype PEFT gives it (its base in bf16).
    assert _dtypes(run / "victim" / "model") == {"BF16"}
    assert _dtypes(run / "defenses" / "full-ft" / "model") == {"BF16"}
    assert _dtypes(run / "defenses" / "fine-mixing" / "base") == {"BF16"}  # the reset model, the adapter's base
    assert _dtypes(run / "defenses" / "w2sdefense" / "model") <= {"BF16", "F32"}
    assert _dtypes(run / "defenses" / "w2sdefense" / "model")
    for name in ("w2sdefense", "w2s-depths", "crow", "nad"):
        history = json.loads((run / "defenses" / name / "metrics.json").read_text())["history"]
        assert history and all(math.isfinite(v) for h in history for k, v in h.items()
                               if isinstance(v, float) and k != "lr"), name
