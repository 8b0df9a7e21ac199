"""latent-adversarial: the hidden-state shift and where it lands, its ball, the repair's loss against reset-distill's,
and the whole defense on a tiny model saved to disk."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from w2sdefense.config import DefenseConfig
from w2sdefense.data.records import UNLABELLED
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.distill import SuspectLogits, distill_step
from w2sdefense.defenses.latent_adversarial import (LatentAdversarialSettings, LatentShift, adversarial_step, ascend,
                                                    probe_batches, shift_layer)
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier
from w2sdefense.models.tiny import build_tiny

from conftest import synthetic_examples
from test_reset_and_controls import LORA, base_and_victim  # noqa: F401  (a fixture: a tiny base and its fine-tune)


def _tiny() -> Classifier:
    torch.manual_seed(0)
    model, tok = build_tiny("tiny-llama", 2)
    return Classifier(model.eval(), tok)


def test_the_shift_lands_exactly_after_the_chosen_layer_and_nowhere_once_unset():
    clf = _tiny()
    layers = clf.model.config.num_hidden_layers
    assert shift_layer(clf.model, 0.0) is clf.model.model.layers[0]
    assert shift_layer(clf.model, 1.0) is clf.model.model.layers[layers - 1]
    inputs = clf.tokenizer(["good fine great", "bad dull"], return_tensors="pt", padding=True)
    hook = LatentShift(shift_layer(clf.model, 0.0))
    delta = torch.randn(clf.model.config.hidden_size)
    with torch.no_grad():
        plain = clf.model(**inputs, output_hidden_states=True).hidden_states
        with hook.added(delta):
            shifted = clf.model(**inputs, output_hidden_states=True).hidden_states
        again = clf.model(**inputs, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embeddings, [1] the first layer's output: the shift is there, added to every position.
    assert torch.equal(plain[0], shifted[0])
    assert torch.allclose(shifted[1] - plain[1], delta.expand_as(plain[1]), atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))
    hook.handle.remove()


def test_an_ascent_step_is_normalised_and_the_shift_stays_in_its_ball():
    delta = torch.zeros(4)
    ascend(delta, torch.tensor([3.0, 0.0, 4.0, 0.0]), 0.5, 10.0)
    assert torch.allclose(delta, torch.tensor([0.3, 0.0, 0.4, 0.0]))
    ascend(delta, torch.tensor([0.0, 100.0, 0.0, 0.0]), 30.0, 2.0)
    assert float(delta.norm()) == pytest.approx(2.0)
    assert float(delta[1]) > float(delta[2]) > 0  # the step's direction dominates, then the projection shrinks


def test_with_adv_zero_the_repair_loss_is_reset_distills_and_with_adv_it_adds_the_shifted_cross_entropy():
    clf = _tiny()
    rows = synthetic_examples(8, 2, 0)
    rows[1] = dataclasses.replace(rows[1], label=UNLABELLED)
    batch = probe_batches(clf, rows, 32, 8, torch.device("cpu"))[0]
    cache = SuspectLogits(torch.randn(8, 2), {e.idx: i for i, e in enumerate(rows)})
    hook = LatentShift(shift_layer(clf.model, 0.5))
    delta = torch.zeros(clf.model.config.hidden_size, requires_grad=True)
    s = LatentAdversarialSettings(adv=0.0)
    plain = distill_step(s.alpha, s.beta, s.temperature, cache, torch.device("cpu"))(clf.model, batch)
    none = adversarial_step(s, hook, delta, 0, 1.0, cache, torch.device("cpu"))(clf.model, batch)
    assert torch.equal(plain.loss, none.loss) and none.terms["adv"] == 0.0
    # With a weight, the term is the CE of the true label (the suspect's answer when unlabelled) under the shift,
    # on the rows whose answer is not the target.
    with torch.no_grad():
        delta.copy_(torch.randn_like(delta))
    out = adversarial_step(dataclasses.replace(s, adv=2.0), hook, delta, 0, 1.0, cache, torch.device("cpu"))(
        clf.model, batch)
    answer = torch.where(batch["labels"] == UNLABELLED, cache.logits.argmax(-1), batch["labels"])
    keep = answer != 0
    with hook.added(delta):
        shifted = clf.model(input_ids=batch["input_ids"][keep], attention_mask=batch["attention_mask"][keep]).logits
    expected = torch.nn.functional.cross_entropy(shifted.float(), answer[keep])
    assert out.terms["adv"] == pytest.approx(float(expected), rel=1e-5)
    assert float(out.loss) == pytest.approx(float(plain.loss) + 2.0 * float(expected), rel=1e-5)
    out.loss.backward()
    assert delta.grad is not None and float(delta.grad.norm()) > 0  # the shift learns from the same backward
    hook.handle.remove()


def test_latent_adversarial_records_its_probe_and_honours_a_given_target(base_and_victim, tiny_splits, rt, tmp_path):
    _, victim_dir = base_and_victim
    settings = {"probe_steps": 3, "target": 1}
    cfg = DefenseConfig(name="latent-adversarial", settings=settings, train=LORA)
    result = run_defense(DefenseJob(victim_dir, None, tiny_splits, cfg, rt, tmp_path / "la", seed=3))
    details = result.details
    assert details["probe_target"] == 1 and set(details["probe_flip_rates"]) == {"0", "1"}
    assert all(0.0 <= r <= 1.0 for r in details["probe_flip_rates"].values()) and details["shift_radius"] > 0
    assert (tmp_path / "la" / "model").is_dir() and "adv" in result.history[-1]
    bad = DefenseConfig(name="latent-adversarial", settings={"target": 5}, train=LORA)
    with pytest.raises(UserError, match="target is 5; the data has labels 0 to 1"):
        run_defense(DefenseJob(victim_dir, None, tiny_splits, bad, rt, tmp_path / "bad", seed=3))
    for wrong, message in (({"depth": 1.5}, "depth must be in"), ({"epsilon": 0}, "epsilon must be > 0")):
        with pytest.raises(UserError, match=message):
            resolve(DefenseConfig(name="latent-adversarial", settings=wrong))
