"""The paper's setting as configs (configs/paper/), and `run`'s check of every row's base against the victim before
any stage: a base of another family, width, depth or vocabulary is one error line and no run folder."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import huggingface_hub
import pytest
import yaml

from cli_helpers import error_line, run_cli
from w2sdefense.config import ExperimentConfig, dump_yaml, from_dict, load_config
from w2sdefense.defenses.base import check_defenses
from w2sdefense.errors import UserError
from w2sdefense.models.loading import BUILTIN_MODELS
from w2sdefense.models.tiny import build_tiny
from w2sdefense.pipeline import check_bases, run_experiment

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
# The authors' loss weights per attack (alpha CE, beta KD, gamma FA), read from their unlearning.py in word/,
# sentence/ and synattack/ (github.com/shuaizhao95/w2sdefense at 628478c).
AUTHORS_WEIGHTS = {"badnet": (5.0, 0.001, 0.001), "insent": (3.0, 0.01, 0.001), "synbkd": (1.0, 0.035, 0.002)}
TINY = {"victim": {"model": "tiny-llama"}, "teacher": {"model": "tiny-bert"}}


def test_there_is_a_paper_config_for_each_attack():
    assert {p.name for p in PAPER} >= {f"sst2-{attack}.yaml" for attack in AUTHORS_WEIGHTS}


@pytest.mark.parametrize("path", PAPER, ids=[p.name for p in PAPER])
def test_each_paper_config_loads_validates_and_keeps_the_authors_scale(path: Path):
    cfg = load_config(ExperimentConfig, path)
    rows = check_defenses(cfg.defenses)  # every row's settings and recipe, as `run` checks them first
    assert from_dict(ExperimentConfig, yaml.safe_load(dump_yaml(cfg))) == cfg
    assert (cfg.data.max_train, cfg.data.max_dev, cfg.data.max_test) == (None, None, None)
    assert (cfg.poison.count, cfg.poison.mode, cfg.poison.target_label) == (1000, "clean-label", 0)
    assert cfg.victim.model == "meta-llama/Meta-Llama-3-8B" and cfg.victim.train.method == "full"
    assert cfg.teacher.model not in BUILTIN_MODELS and cfg.victim.model not in BUILTIN_MODELS
    bases = [r.settings.base_model for r in rows if getattr(r.settings, "base_model", None)]
    assert bases and set(bases) == {cfg.victim.model}  # every reset goes to the victim's own public model
    for r in rows:  # every repair on the authors' unlearning recipe: 5 epochs of batch 32 over every clean row
        lora = r.train.lora
        assert (r.train.epochs, r.train.batch_size, r.train.lr, r.train.max_train_rows) == (5, 32, 2e-4, None)
        assert (lora.r, lora.alpha, lora.target_modules) == (512, 512, ["q_proj", "v_proj"])
    weights = AUTHORS_WEIGHTS[cfg.attack.name]  # the shared file's attack is the default, badnet
    for r in rows:
        if r.spec.name == "w2sdefense":
            assert (r.settings.alpha, r.settings.beta, r.settings.gamma) == weights, r.cfg.row_name
            assert r.settings.alignment == "reference"


def test_run_refuses_a_base_of_another_model_before_any_stage(tmp_path, small_data):
    """The paper's config for another victim with one base left wrong: one note for the base whose hub config cannot
    be read offline, one error line naming the row and both models, exit 2, and no run folder."""
    out = tmp_path / "run"
    env = {"W2S_DATA_DIR": str(small_data), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli("run", "configs/paper/sst2-badnet.yaml", "--out", str(out), "--set", "victim.model=tiny-llama",
                   "--set", "teacher.model=tiny-bert", "--set", "defenses.3.base_model=tiny-bert", env=env)
    line = error_line(proc)
    assert line.startswith("error: defenses.3 (w2s-reset): base_model tiny-bert is a bert model")
    assert "tiny-llama is a llama model" in line and "family bert vs llama" in line
    notes = [n for n in proc.stderr.splitlines() if n.startswith("note:")]
    assert len(notes) == 1 and "defenses.2 (fine-mixing)" in notes[0]
    assert "meta-llama/Meta-Llama-3-8B cannot be read here" in notes[0]
    assert not out.exists()


def _config_folder(folder: Path, **changes) -> Path:
    """A folder holding only tiny-llama's config.json, with `changes` to it (no weights: the check reads configs)."""
    config = build_tiny("tiny-llama", 2)[0].config
    for key, value in changes.items():
        setattr(config, key, value)
    config.save_pretrained(folder)
    return folder


def _experiment(out: Path, base: str) -> ExperimentConfig:
    # No data anywhere: were the check gone, the run would stop at its first stage, its folder made.
    data = {"data_dir": str(out.parent / "no-data"), "hub_fallback": False}
    return from_dict(ExperimentConfig, {"output_dir": str(out), "data": data, **TINY,
                                        "defenses": [{"name": "lora-ft"},
                                                     {"name": "fine-mixing", "label": "reset", "base_model": base}]})


def test_a_base_of_another_width_fails_before_the_run_folder(tmp_path, rt):
    narrow = _config_folder(tmp_path / "narrow", hidden_size=32)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"^defenses\.1 \(reset\): base_model {re.escape(str(narrow))} is a llama "
                                        r"model .* and tiny-llama is a llama model .*: hidden size 32 vs 64; "):
        run_experiment(_experiment(out, str(narrow)), rt=rt)
    assert not out.exists()


def test_an_adapters_base_is_what_is_checked(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-bert"}))
    with pytest.raises(UserError, match=r"defenses\.1 \(reset\): base_model .*adapter is a bert model"):
        check_bases("tiny-llama", check_defenses(_experiment(tmp_path, str(adapter)).defenses))


def test_a_matching_base_passes_and_an_unreadable_hub_base_is_a_note(tmp_path, monkeypatch, caplog):
    same_shape = _config_folder(tmp_path / "copy")  # another name, the victim's family, width, depth and vocabulary
    check_bases("tiny-llama", check_defenses(_experiment(tmp_path, str(same_shape)).defenses))
    # The same name agrees without reading anything: this hub id exists nowhere.
    check_bases("org/no-such-model", check_defenses(_experiment(tmp_path, "org/no-such-model").defenses))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        check_bases("tiny-llama", check_defenses(_experiment(tmp_path, "org/no-such-model").defenses))
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("note:")]
    assert len(notes) == 1 and "defenses.1 (reset)" in notes[0] and "org/no-such-model cannot be read here" in notes[0]


def _paragraphs(text: str) -> list[str]:
    """The README's paragraphs; a fenced code block goes with the paragraph after it (which explains it)."""
    found, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip() and current and not current[-1].startswith("```"):
            found.append("\n".join(current))
            current = []
        elif line.strip() or fenced:
            current.append(line)
    return found + (["\n".join(current)] if current else [])


def test_the_readme_says_the_packaged_model_is_quantised_wherever_it_names_it():
    paragraphs = _paragraphs((REPO / "README.md").read_text(encoding="utf-8"))
    naming = [p for p in paragraphs if "smollm2-135m" in p]
    assert len(naming) >= 5  # the quick start, clean, scan, models, config, results and Python sections name it
    silent = [p[:120] for p in naming if "Q4_1" not in p]
    assert not silent, f"paragraphs naming smollm2-135m without saying it is Q4_1-quantised: {silent}"
