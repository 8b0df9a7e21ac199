"""plant-reset: the defender's planted backdoors, the signature they share, the neuron reset, and the whole defense
on a tiny model saved to disk."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from w2sdefense.config import DefenseConfig, LoraConfig
from w2sdefense.data.records import Example
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.plant_reset import (mlp_projections, output_columns, percentile_ranks, planted_rows,
                                             shared_signature, zero_neurons)
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.loading import merge_adapter
from w2sdefense.models.tiny import build_tiny

from test_reset_and_controls import LORA, base_and_victim  # noqa: F401  (a fixture: a tiny base and its fine-tune)


def _neurons(model) -> int:
    return sum(w.shape[1] for w in output_columns(model))


def test_an_empty_neuron_set_leaves_the_suspect_bit_for_bit_and_a_mask_zeroes_exactly_its_columns():
    model, _ = build_tiny("tiny-llama", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    total = _neurons(model)
    assert zero_neurons(model, torch.zeros(total, dtype=torch.bool)) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    mask = torch.zeros(total, dtype=torch.bool)
    mask[[0, 5, total - 1]] = True
    assert zero_neurons(model, mask) == 3
    columns = torch.cat(output_columns(model), dim=1)
    assert bool((columns[:, mask] == 0).all()) and bool((columns[:, ~mask] != 0).any(dim=0).all())
    width = mlp_projections(model)[0].in_features
    assert not torch.equal(mlp_projections(model)[-1].weight[:, -1], before[next(
        k for k in before if k.endswith(f"layers.{len(mlp_projections(model)) - 1}.mlp.down_proj.weight"))][:, -1])
    assert width * len(mlp_projections(model)) == total
    with pytest.raises(ValueError, match="the mask covers 3 neurons"):
        zero_neurons(model, torch.zeros(3, dtype=torch.bool))


def test_the_signature_is_the_neurons_every_variant_moved_not_those_one_variant_moved_most():
    shifts = [torch.full((10,), 0.1) for _ in range(3)]
    for s in shifts:
        s[2], s[4] = 1.0, 0.5  # moved by every planted backdoor
    shifts[0][7] = 50.0  # moved hugely by one variant only
    assert shared_signature(shifts, 0.1).nonzero().flatten().tolist() == [2]
    assert shared_signature(shifts, 0.2).nonzero().flatten().tolist() == [2, 4]
    assert percentile_ranks(torch.tensor([0.1, 0.1, 1.0, 0.5])).tolist() == pytest.approx([0.0, 0.0, 1.0, 2 / 3])


def test_planted_rows_trigger_and_relabel_only_a_share_of_the_other_labels_rows():
    rows = [Example(f"word{i} is a fine text", i % 2, i) for i in range(40)]
    planted = planted_rows(rows, "zq", 0, 0.5, random.Random(0))
    changed = [p for p, r in zip(planted, rows) if p != r]
    assert len(changed) == 10 and all(p.label == 0 and p.poisoned and "zq" in p.text for p in changed)
    assert all(r.label == 1 for p, r in zip(planted, rows) if p != r)  # only rows of other labels
    assert planted_rows(rows, "zq", 0, 0.5, random.Random(0)) == planted


def test_plant_reset_zeroes_its_signature_and_the_repair_cannot_revive_it(base_and_victim, tiny_splits, rt, tmp_path):
    _, victim_dir = base_and_victim
    with pytest.raises(UserError, match="ratio must be in"):
        resolve(DefenseConfig(name="plant-reset", settings={"ratio": 1.5}))
    every_linear = dataclasses.replace(LORA, lora=LoraConfig(r=4, alpha=8, target_modules=["all-linear"]))
    cfg = DefenseConfig(name="plant-reset", settings={"variants": 2, "steps": 4, "ratio": 0.1}, train=every_linear)
    result = run_defense(DefenseJob(victim_dir, None, tiny_splits, cfg, rt, tmp_path / "pr", seed=3))
    suspect = load_classifier(victim_dir, 2).model
    total = _neurons(suspect)
    assert result.details["zeroed_neurons"] == int(0.1 * total)
    assert len(result.details["planted"]) == 2 and result.details["zeroed_adapters_masked"] > 0
    assert not (tmp_path / "pr" / "plant").exists()  # the copies' folders are gone
    merge_adapter(tmp_path / "pr" / "model", tmp_path / "merged", 2)
    columns = torch.cat(output_columns(load_classifier(str(tmp_path / "merged"), 2).model), dim=1)
    assert int((columns == 0).all(dim=0).sum()) == int(0.1 * total)
