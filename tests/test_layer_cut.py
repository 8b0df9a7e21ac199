"""layer-cut: the cut drops exactly the layers above it (the kept ones compute what they computed), the choice of
the layer follows the probes and the tolerance, and the whole defense on a tiny model leaves a shorter checkpoint
that plain transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from w2sdefense.config import DefenseConfig
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.layer_cut import cut_layers, layer_stack, probe_accuracy
from w2sdefense.errors import UserError
from w2sdefense.models.features import fit_probe
from w2sdefense.models.tiny import build_tiny

from test_reset_and_controls import LORA, base_and_victim  # noqa: F401,F811  (a fixture: a tiny base and its fine-tune)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-bert"])
def test_a_cut_model_computes_what_its_kept_layers_computed(family):
    torch.manual_seed(0)
    model, tok = build_tiny(family, 2)
    model.eval()
    inputs = tok(["good fine great", "bad dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True).hidden_states
    before = cut_layers(model, 1)
    assert before == len(full) - 1 and len(layer_stack(model)[2]) == 1 and model.config.num_hidden_layers == 1
    with torch.no_grad():
        cut = model(**inputs, output_hidden_states=True).hidden_states
    assert len(cut) == 2 and torch.equal(cut[0], full[0])
    if family == "tiny-llama":  # the last hidden state is the final norm of the first layer's output
        assert torch.allclose(cut[1], model.model.norm(full[1]), atol=1e-5)
    else:  # BERT's layers norm their own output: the first layer's output is what it was
        assert torch.allclose(cut[1], full[1], atol=1e-6)
    with pytest.raises(UserError, match="layers 1..1"):
        cut_layers(model, 2)


def test_a_probe_reads_a_separable_layer_and_not_a_noise_layer():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    signal = torch.randn(200, 8, generator=g) + 3.0 * y[:, None].float()
    noise = torch.randn(200, 8, generator=g)
    assert probe_accuracy(signal[:100], y[:100], signal[100:], y[100:], 2) == 1.0
    assert probe_accuracy(noise[:100], y[:100], noise[100:], y[100:], 2) < 0.7
    head = fit_probe(signal, y, 1.0, 2)
    assert head.weight.shape == (2, 8)


def test_layer_cut_chooses_the_lowest_layer_within_the_tolerance_and_saves_a_shorter_model(base_and_victim,
                                                                                             tiny_splits, rt, tmp_path):
    _, victim_dir = base_and_victim
    wide = DefenseConfig(name="layer-cut", settings={"tolerance": 1.0}, train=LORA)
    result = run_defense(DefenseJob(victim_dir, None, tiny_splits, wide, rt, tmp_path / "wide", seed=3))
    details = result.details
    # Every layer is within a tolerance of 1: the cut is after the first; the record has every layer's probe.
    assert details["cut_layer"] == 1 and len(details["probe_dev_accuracy"]) == details["layers"] >= 2
    assert all(0.0 <= a <= 1.0 for a in details["probe_dev_accuracy"]) and 0.0 <= details["suspect_dev_accuracy"] <= 1
    strict = DefenseConfig(name="layer-cut", settings={"tolerance": 0.0, "unlabelled": False}, train=LORA)
    chosen = run_defense(DefenseJob(victim_dir, None, tiny_splits, strict, rt, tmp_path / "strict", seed=3)).details
    first = next((i + 1 for i, a in enumerate(chosen["probe_dev_accuracy"]) if a >= chosen["suspect_dev_accuracy"]),
                 chosen["layers"])
    assert chosen["cut_layer"] == first
    # The saved base is the cut model; plain transformers loads it with its new depth.
    base = tmp_path / "wide" / "base"
    assert json.loads((base / "config.json").read_text())["num_hidden_layers"] == 1
    model = AutoModelForSequenceClassification.from_pretrained(base)
    assert len(layer_stack(model)[2]) == 1 and (tmp_path / "wide" / "model").is_dir()


def test_layer_cut_settings_are_checked():
    for wrong, message in (({"head": "odd"}, "layer-cut.head"), ({"tolerance": -0.1}, "tolerance"),
                           ({"layer": 0}, "layer-cut.layer")):
        with pytest.raises(UserError, match=message):
            resolve(DefenseConfig(name="layer-cut", settings=wrong))
