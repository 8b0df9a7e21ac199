"""fine-pruning on tiny models: the most dormant neurons of the last layers, and only they, are zeroed,
and they stay zero through full fine-tuning and under a LoRA adapter."""

from __future__ import annotations

import pytest
import torch

from w2sdefense.config import DefenseConfig, LoraConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.fine_pruning import FinePruningSettings, mlp_output, neuron_activity, prune, transformer_layers
from w2sdefense.models import load_classifier
from w2sdefense.train.job import run_train

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)


@pytest.fixture
def victim(tiny_splits, rt, tmp_path):
    run_train("tiny-llama", tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    return str(tmp_path / "victim")


def _down(model, layer: int) -> torch.Tensor:
    hidden = model.config.hidden_size
    return mlp_output(transformer_layers(model)[layer], hidden).weight.detach().clone()


def test_prune_zeroes_the_least_active_neurons_of_the_last_layers_only(victim, tiny_splits, rt):
    clf = load_classifier(victim, 2)
    before = [_down(clf.model, i) for i in range(2)]
    layer = transformer_layers(clf.model)[-1]
    proj = mlp_output(layer, clf.config.hidden_size)
    (activity,) = neuron_activity(clf, [proj], tiny_splits.train, 32, 8, rt)
    record = prune(clf, FinePruningSettings(ratio=0.25, layers=1), tiny_splits.train, 32, rt)
    k = proj.in_features // 4
    assert record == {"pruned_neurons": [k], "pruned_layers": 1}
    zero = (_down(clf.model, 1) == 0).all(dim=0)
    assert int(zero.sum()) == k
    assert set(torch.nonzero(zero).flatten().tolist()) == set(torch.argsort(activity)[:k].tolist())
    assert torch.equal(_down(clf.model, 0), before[0])  # the first layer is left alone


@pytest.mark.parametrize("method", ["full", "lora"])
def test_pruned_neurons_stay_pruned_through_fine_tuning(victim, tiny_splits, rt, tmp_path, method):
    train = dict(method=method, **FAST) | ({"lora": {"r": 4, "alpha": 8}} if method == "lora" else {})
    cfg = DefenseConfig(name="fine-pruning", settings={"ratio": 0.5, "layers": 1, "rows": 32}, train=train)
    assert resolve(cfg).train.method == method
    metrics = run_defense(DefenseJob(victim, None, tiny_splits, cfg, rt, tmp_path / "fp", seed=0))
    assert metrics.details["pruned_neurons"] == [64] and metrics.steps > 0
    if method == "lora":  # the default adapter sits on every linear layer, the pruned projection too
        assert metrics.details["pruned_adapters_masked"] == 1
    model = load_classifier(str(tmp_path / "fp"), 2).model
    if method == "lora":
        model = model.merge_and_unload()
    down = _down(model, 1)
    assert int((down == 0).all(dim=0).sum()) == 64
    # ... and the fine-tuning really changed the model (the test can fail).
    q_before = transformer_layers(load_classifier(victim, 2).model)[0].self_attn.q_proj.weight
    assert not torch.equal(transformer_layers(model)[0].self_attn.q_proj.weight, q_before)
