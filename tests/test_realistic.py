"""The realistic protocol's pieces: the defender's disjoint rows, the re-learning test's rows, the base with a
fresh head, and reset-distill (its loss against a reference, its equality with fine-mixing at beta 0)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from w2sdefense.config import DataConfig, DefenderConfig, DefenseConfig, RelearnConfig
from w2sdefense.data.defender import defender_pools, defender_splits, draw_defender_rows
from w2sdefense.data.poisoned import relearn_rows
from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.losses import labelled_cross_entropy
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.reset import backbone, reinit_head
from w2sdefense.models.tiny import build_tiny

from conftest import synthetic_examples
from test_reset_and_controls import LORA, base_and_victim  # noqa: F401  (a fixture: a tiny base and its fine-tune)


def test_the_defenders_draw_never_holds_an_attacker_row_and_its_two_pools_are_disjoint():
    train = synthetic_examples(300, 2, 0)
    pools = defender_pools(train, 200)
    assert {e.idx for e in pools.labelled}.isdisjoint(e.idx for e in pools.unlabelled)
    assert len(pools.labelled) + len(pools.unlabelled) == 100
    for seed in range(5):
        rows, texts = draw_defender_rows(pools, DefenderConfig(rows=40, unlabelled=30), seed)
        assert len(rows) == 40 and len(texts) == 30
        assert min(e.idx for e in rows + texts) >= 200  # never one of the attacker's first 200 rows
        assert {e.idx for e in rows}.isdisjoint(e.idx for e in texts)
        assert all(e.label == UNLABELLED for e in texts) and all(e.label in (0, 1) for e in rows)
    same = draw_defender_rows(pools, DefenderConfig(rows=40), 3)[0]
    assert same == draw_defender_rows(pools, DefenderConfig(rows=40), 3)[0]
    assert same != draw_defender_rows(pools, DefenderConfig(rows=40), 4)[0]
    with pytest.raises(UserError, match="defender.rows=51 is more than the 50 rows"):
        draw_defender_rows(pools, DefenderConfig(rows=51), 0)


def test_defender_splits_read_the_rows_past_the_attackers_from_the_full_train_file(small_data):
    data = DataConfig(dataset="sst2", data_dir=str(small_data), max_train=200)
    from w2sdefense.data.datasets import load_splits
    attacker = load_splits(data)
    assert defender_splits(data, DefenderConfig(), 0, attacker) is attacker  # the main protocol: the same rows
    mine = defender_splits(data, DefenderConfig(rows=32, unlabelled=16), 0, attacker)
    assert len(mine.train) == 32 and len(mine.unlabelled) == 16 and mine.dev == attacker.dev
    assert min(e.idx for e in mine.train + mine.unlabelled) >= 200
    with pytest.raises(UserError, match="needs data.max_train"):
        defender_splits(dataclasses.replace(data, max_train=None), DefenderConfig(rows=8), 0, attacker)
    with pytest.raises(UserError, match="defender.unlabelled needs defender.rows"):
        DefenderConfig(unlabelled=5)


def test_relearn_rows_hold_exactly_the_asked_poisoned_rows_and_are_seeded():
    train = [Example(f"t{i}", i % 2, i, poisoned=i % 10 == 0) for i in range(200)]
    rows = relearn_rows(train, 64, 6, seed=1)
    assert len(rows) == 64 and sum(e.poisoned for e in rows) == 6 and len({e.idx for e in rows}) == 64
    assert rows == relearn_rows(train, 64, 6, seed=1) and rows != relearn_rows(train, 64, 6, seed=2)
    with pytest.raises(UserError, match="relearn needs 30 poisoned"):
        relearn_rows(train, 64, 30, seed=1)
    with pytest.raises(UserError, match="cannot exceed"):
        RelearnConfig(rows=4, poisoned=5)


def test_labelled_cross_entropy_is_cross_entropy_over_the_labelled_rows_and_zero_without_any():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, UNLABELLED, 2, 1, UNLABELLED, 0])
    keep = labels != UNLABELLED
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(labelled_cross_entropy(logits, labels, UNLABELLED), expected)
    assert labelled_cross_entropy(logits, torch.full((6,), UNLABELLED), UNLABELLED).item() == 0.0


def test_a_fresh_head_changes_every_head_weight_and_no_backbone_weight():
    model, _ = build_tiny("tiny-llama", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inside = {k for k, _ in backbone(model).named_parameters()}
    count = reinit_head(model, torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert count == model.score.weight.numel()
    assert not torch.equal(before["score.weight"], after["score.weight"])
    assert all(torch.equal(before[f"model.{k}"], after[f"model.{k}"]) for k in inside)


def _adapter(path) -> dict:
    return load_file(str(path / "model" / "adapter_model.safetensors"))


def test_reset_distill_at_beta_zero_without_unlabelled_texts_trains_exactly_fine_mixing(
        base_and_victim, tiny_splits, rt, tmp_path):
    base_dir, victim_dir = base_and_victim

    def run(name, out, splits=tiny_splits, **settings):
        cfg = DefenseConfig(name=name, settings={"base_model": base_dir, **settings}, train=LORA)
        return run_defense(DefenseJob(victim_dir, None, splits, cfg, rt, tmp_path / out, seed=3))

    run("fine-mixing", "fm")
    run("reset-distill", "rd0", beta=0.0)
    fm, rd0 = _adapter(tmp_path / "fm"), _adapter(tmp_path / "rd0")
    assert fm.keys() == rd0.keys() and all(torch.equal(fm[k], rd0[k]) for k in fm)
    # Distillation moves it, and unlabelled texts are trained on (their ids reach the loss's lookup).
    texts = [dataclasses.replace(e, idx=1000 + e.idx, label=UNLABELLED) for e in synthetic_examples(24, 2, 9)]
    result = run("reset-distill", "rd", dataclasses.replace(tiny_splits, unlabelled=texts), beta=1.0)
    assert result.details["unlabelled_rows"] == 24 and result.details["train_rows"] == len(tiny_splits.train) + 24
    rd = _adapter(tmp_path / "rd")
    assert any(not torch.equal(fm[k], rd[k]) for k in fm)


def test_the_base_with_a_fresh_head_keeps_nothing_of_the_suspect(base_and_victim, tiny_splits, rt, tmp_path):
    base_dir, victim_dir = base_and_victim
    cfg = DefenseConfig(name="fine-mixing", settings={"base_model": base_dir, "head": "fresh"}, train=LORA)
    result = run_defense(DefenseJob(victim_dir, None, tiny_splits, cfg, rt, tmp_path / "fresh", seed=3))
    assert result.details["reset_head"] == "fresh" and result.details["reset_head_weights"] > 0
    saved = load_classifier(str(tmp_path / "fresh" / "base"), 2).model.state_dict()
    suspect = load_classifier(victim_dir, 2).model.state_dict()
    assert not torch.equal(saved["score.weight"], suspect["score.weight"])
    with pytest.raises(UserError, match="head must be one of"):
        resolve(DefenseConfig(name="fine-mixing", settings={"base_model": base_dir, "head": "new"}))


def test_a_teacher_with_suspect_kd_trains_on_the_unlabelled_texts_too_and_without_it_as_before(
        base_and_victim, tiny_splits, rt, tmp_path):
    from w2sdefense.config import TeacherConfig, TrainConfig
    from w2sdefense.defenses.teacher import run_teacher

    _, victim_dir = base_and_victim
    texts = [dataclasses.replace(e, idx=1000 + e.idx, label=UNLABELLED) for e in synthetic_examples(24, 2, 9)]
    splits = dataclasses.replace(tiny_splits, unlabelled=texts)
    recipe = TrainConfig(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)
    plain = run_teacher(TeacherConfig(model="tiny-bert", train=recipe), splits, victim_dir, rt, tmp_path / "t0", 0)
    kd = run_teacher(TeacherConfig(model="tiny-bert", train=recipe, suspect_kd=1.0), splits, victim_dir, rt,
                     tmp_path / "t1", 0)
    assert plain.details["train_rows"] == 64 and kd.details["train_rows"] == 64 + 24
    assert "kd" in kd.history[-1] and "kd" not in plain.history[-1]
    with pytest.raises(UserError, match="teacher.suspect_kd must be >= 0"):
        TeacherConfig(suspect_kd=-1.0)
