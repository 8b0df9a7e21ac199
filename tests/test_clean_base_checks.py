"""`clean` checks and reports its base: how far the suspect is from it (a warning when too far for a fine-tune), the
base's tokenizer and a fresh head as options, every clean row at the measured step budget, the suspect's label names,
and a changed setting refused instead of silently replacing the cleaned model (issue 33, items 2 and 3)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from cli_helpers import error_line, run_cli
from w2sdefense.clean import changed_keys, choose_defense
from w2sdefense.eval.clean_report import label_text, reset_lines
from w2sdefense.config import CleanJob, DefenseConfig
from w2sdefense.defenses import resolve
from w2sdefense.defenses.recipes import CLEAN_BUDGET
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.loading import label_names
from w2sdefense.models.reset import FAR_FROM_BASE, reset_student
from w2sdefense.models.tiny import build_tiny
from w2sdefense.results import CleanEvaluation, CleanReport

NAMES = {0: "negative", 1: "positive"}


def w2s(*args: str) -> object:
    return run_cli(*args, env={"W2S_DATA_DIR": "/nonexistent"})


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    return [{"text": " ".join(rng.choice(words[i % 2]) for _ in range(4)), "label": i % 2} for i in range(n)]


def _data(folder: Path, train: int = 40) -> Path:
    folder.mkdir(parents=True)
    for split, rows in (("train", _rows(train, 0)), ("dev", _rows(8, 1)), ("test", _rows(12, 2))):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _save_tiny(folder: Path, seed: int) -> Path:
    """A tiny Llama 'public base' initialised from `seed`, its labels named."""
    torch.manual_seed(seed)
    model, tok = build_tiny("tiny-llama", 2)
    model.config.id2label, model.config.label2id = NAMES, {v: k for k, v in NAMES.items()}
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_clean_trains_on_every_row_for_the_measured_budget_unless_the_user_says_otherwise() -> None:
    plain = resolve(DefenseConfig(name="fine-mixing", settings={"base_model": "tiny-llama"}))
    assert plain.train.max_train_rows == 1280  # the recipe `run` uses: the first rows in file order
    chosen = resolve(choose_defense(CleanJob(model="m", base_model="tiny-llama")))
    assert chosen.cfg.name == "fine-mixing"
    assert chosen.train.max_train_rows is None and chosen.train.max_steps == CLEAN_BUDGET["max_steps"]
    told = CleanJob(model="m", defense=DefenseConfig(name="auto", train={"max_steps": 4, "max_train_rows": 10}))
    assert (resolve(choose_defense(told)).train.max_steps, resolve(choose_defense(told)).train.max_train_rows) == (4, 10)


@pytest.mark.parametrize("key,value,flag", [("head", "fresh", "--fresh-head"), ("tokenizer", "base", "--base-tokenizer")])
def test_a_reset_option_without_a_reset_is_refused_naming_the_flag(key: str, value: str, flag: str) -> None:
    job = CleanJob(model="m", defense=DefenseConfig(name="auto", settings={key: value}))  # no base: W2SDefense
    with pytest.raises(UserError, match=flag):
        choose_defense(job)
    reset = resolve(choose_defense(CleanJob(model="m", base_model="tiny-llama",
                                            defense=DefenseConfig(name="auto", settings={key: value}))))
    assert getattr(reset.settings, key) == value


def test_the_cli_refuses_fresh_head_without_a_base_in_one_line(tmp_path: Path) -> None:
    data = _data(tmp_path / "d")
    line = error_line(w2s("clean", "--model", "tiny-llama", "--data", str(data), "--fresh-head",
                          "--out", str(tmp_path / "o")))
    assert "--fresh-head" in line and "--base" in line
    assert not (tmp_path / "o").exists()


def test_the_reset_takes_the_base_tokenizer_when_asked_and_counts_the_tokens_the_suspect_remaps(tmp_path: Path) -> None:
    base = _save_tiny(tmp_path / "base", 0)

    def suspect():
        clf = load_classifier(str(base), 2)
        with torch.no_grad():
            for p in clf.model.parameters():
                p.add_(0.01 * torch.randn(p.shape))
        clf.tokenizer = AutoTokenizer.from_pretrained(base)
        clf.tokenizer.add_tokens(["zzqx"])  # a vocabulary the base does not have
        return clf

    kept = suspect()
    record = reset_student(kept, str(base), 0.0, "mask", 0)
    assert record["reset_tokens_remapped"] == 1 and record["reset_tokenizer"] == "suspect"
    assert "zzqx" in kept.tokenizer.get_vocab()
    swapped = suspect()
    record = reset_student(swapped, str(base), 0.0, "mask", 0, tokenizer="base")
    assert record["reset_tokenizer"] == "base" and record["reset_tokens_remapped"] == 1
    assert swapped.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    with pytest.raises(UserError, match="tokenizer must be one of"):
        reset_student(suspect(), str(base), 0.0, "mask", 0, tokenizer="other")


def _report(reset: dict | None, names: list[str] | None = None) -> CleanReport:
    measured = CleanEvaluation(clean_accuracy=0.9, clean_total=10, triggers=[])
    return CleanReport(model="m", base_model="b", defense={"name": "fine-mixing"}, defense_stage_time_s=1.0,
                       selected_step=2, before=measured, after=measured, cleaned_model="o/model", environment={},
                       reset=reset, label_names=names)


def test_the_report_warns_only_when_the_suspect_is_too_far_from_the_base_to_be_its_fine_tune() -> None:
    near = reset_lines(_report({"suspect_base_relative_distance": 0.0047, "reset_tokenizer": "suspect"}))
    assert near == ["the suspect is 0.47% away from the base (the backbone's weight change relative to the base's "
                    "weights): a fine-tune of it."]
    far = reset_lines(_report({"suspect_base_relative_distance": FAR_FROM_BASE * 3}))
    assert len(far) == 1 and far[0].startswith("warning:") and "not the model the suspect was fine-tuned from" in far[0]
    remapped = reset_lines(_report({"reset_tokens_remapped": 3, "reset_tokenizer": "suspect"}))
    assert remapped and "maps 3 tokens" in remapped[0] and "--base-tokenizer" in remapped[0]
    assert reset_lines(_report(None)) == []


def test_label_names_come_from_id2label_unless_generic(tmp_path: Path) -> None:
    named = _save_tiny(tmp_path / "named", 0)
    assert label_names(str(named)) == ["negative", "positive"]
    assert label_text(1, ["negative", "positive"]) == "label 1 (positive)" and label_text("0", None) == "label 0"
    torch.manual_seed(0)
    model, tok = build_tiny("tiny-llama", 2)
    model.save_pretrained(tmp_path / "generic")
    assert label_names(str(tmp_path / "generic")) is None  # LABEL_0, LABEL_1 name nothing


def test_changed_keys_names_every_dotted_key_that_differs() -> None:
    old = {"a": 1, "d": {"x": 1, "y": [1]}, "gone": 2}
    assert changed_keys(old, {"a": 1, "d": {"x": 2, "y": [1]}, "n": 3}) == ["d.x", "gone", "n"]
    assert changed_keys(old, old) == []


def test_clean_end_to_end_far_base_options_label_names_and_a_changed_setting_refused(tmp_path: Path) -> None:
    data = _data(tmp_path / "d")
    parent, stranger = _save_tiny(tmp_path / "parent", 0), _save_tiny(tmp_path / "stranger", 1)
    victim = tmp_path / "victim"
    proc = w2s("train", "--data", str(data), "--model", str(parent), "--out", str(victim), "--set", "train.epochs=1",
               "--set", "train.batch_size=8", "--set", "train.max_length=32")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o"
    args = ["clean", "--model", str(victim), "--data", str(data), "--base", str(stranger), "--fresh-head",
            "--base-tokenizer", "--out", str(out), "--set", "defense.train.max_steps=2"]
    proc = w2s(*args, "--trigger", "cf")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["train_rows"] == 40 and report["steps"] == 2  # every row, not a first-rows cap
    assert report["reset"]["reset_head"] == "fresh" and report["reset"]["reset_tokenizer"] == "base"
    assert report["reset"]["suspect_base_relative_distance"] > FAR_FROM_BASE  # independently initialised
    assert report["label_names"] == ["negative", "positive"]
    summary = "\n".join(report["summary"])
    assert "warning: the suspect's backbone is" in summary and "fresh one" in summary
    assert "trained 2 steps on 40 labelled clean rows" in summary
    assert "fine-mixing is the default with the public base known: of the defenses the benchmark measured" in summary
    assert any(line.startswith("trigger 'cf': ASR-cc toward label") and ("(negative)" in line or "(positive)" in line)
               for line in report["summary"])
    weights = out / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    line = error_line(w2s(*args, "--trigger", "cf", "--set", "defense.rho=0.5"))
    assert "other settings" in line and "rho" in line and "--overwrite" in line
    assert weights.stat().st_mtime_ns == stamp
    proc = w2s(*args, "--trigger", "cf", "--trigger", "mn")  # only what is measured changed: the model is re-used
    assert proc.returncode == 0, proc.stderr
    assert weights.stat().st_mtime_ns == stamp and len(json.loads((out / "report.json").read_text())["after"]["triggers"]) == 2
