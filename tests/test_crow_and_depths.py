"""CROW, the relational alignment at several depths and the decaying gamma, on tiny models: each loss
against a hand computation, and the settings that reduce them to a known defense."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from w2sdefense.config import DefenseConfig, LoraConfig, TeacherConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.crow import CrowSettings, crow_loss
from w2sdefense.defenses.losses import feature_alignment_relational, layer_consistency
from w2sdefense.defenses.teacher import run_teacher
from w2sdefense.defenses.w2sdefense import depth_layers, scheduled
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode, make_loader, sorted_batches
from w2sdefense.train.job import run_train

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)
LORA = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.1), **FAST)


@pytest.fixture
def victim(tiny_splits, rt, tmp_path):
    run_train("tiny-llama", tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    return str(tmp_path / "victim")


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "adapter_model.safetensors"))


def test_layer_consistency_is_one_minus_cosine_of_adjacent_states_over_real_tokens():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, L=2, H=2]
    b = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    c = torch.tensor([[[0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 0]])  # the second token is padding
    # Token 0: 1 - cos(a, b) = 1 - 1/sqrt(2); 1 - cos(b, c) = 1 - 1/sqrt(2); mean over the two pairs.
    expected = 1 - 2 ** -0.5
    assert float(layer_consistency((a, b, c), mask)) == pytest.approx(expected, rel=1e-6)
    assert float(layer_consistency((a, a), torch.ones(1, 2))) == pytest.approx(0.0, abs=1e-7)


def test_the_relational_alignment_compares_similarity_matrices_and_ignores_scale():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Teacher: identity similarity; student: all ones. Off-diagonal entries differ by 1: 2 of 4 entries.
    assert float(feature_alignment_relational(t, s)) == pytest.approx(0.5)
    assert float(feature_alignment_relational(t, 100 * t)) == pytest.approx(0.0, abs=1e-7)
    wide = torch.randn(2, 7)  # any width: no projection needed
    assert float(feature_alignment_relational(wide, wide * 0.01)) == pytest.approx(0.0, abs=1e-6)


def test_depths_pick_layers_and_gamma_decays_linearly():
    assert depth_layers(None, 30) == [30]
    assert depth_layers([0.33, 0.67, 1.0], 30) == [10, 20, 30]
    assert depth_layers([0.01, 1.0], 2) == [1, 2]  # never the embeddings
    assert scheduled(0.1, None, {"progress": torch.tensor(0.5)}) == 0.1
    assert scheduled(0.1, 0.0, {"progress": torch.tensor(0.0)}) == pytest.approx(0.1)
    assert scheduled(0.1, 0.0, {"progress": torch.tensor(0.75)}) == pytest.approx(0.025)
    with pytest.raises(UserError, match="depths must be fractions"):
        resolve(DefenseConfig(settings={"depths": [0.0, 1.0]}))
    with pytest.raises(UserError, match="teacher_mode zeros .the norm-penalty control. needs alignment per-sample"):
        resolve(DefenseConfig(settings={"teacher_mode": "zeros", "alignment": "normalized"}))
    with pytest.raises(UserError, match="needs an alignment other than reference"):
        resolve(DefenseConfig(settings={"depths": [0.5], "alignment": "reference"}))


def test_crow_with_weight_zero_trains_exactly_the_lora_ft_adapter(victim, tiny_splits, rt, tmp_path):
    for name, settings in (("ft", None), ("crow0", {"epsilon": 0.0, "weight": 0.0}), ("crow", {})):
        cfg = DefenseConfig(name="lora-ft" if settings is None else "crow", settings=settings or {}, train=LORA)
        run_defense(DefenseJob(victim, None, tiny_splits, cfg, rt, tmp_path / name, seed=3))
    ft, zero, crow = (_adapter(tmp_path / n) for n in ("ft", "crow0", "crow"))
    assert ft.keys() == zero.keys() and all(torch.equal(ft[k], zero[k]) for k in ft)
    assert any(not torch.equal(ft[k], crow[k]) for k in ft)  # the term really trains something else


def test_crows_perturbation_is_an_fgsm_step_that_raises_the_consistency_term(victim, tiny_splits):
    clf = load_classifier(victim, 2)
    encoded = encode(clf.tokenizer, tiny_splits.train, 32)
    batch = next(iter(make_loader(encoded, sorted_batches(encoded.lengths, 8), clf.tokenizer.pad_token_id)))
    clf.model.eval()  # no dropout: the two passes see the same model
    out = crow_loss(CrowSettings(epsilon=0.05, weight=2.0))(clf.model, batch)
    assert out.terms["consistency_adv"] > out.terms["consistency"]  # the step ascends the term
    # By hand: the perturbation, and the total.
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    emb = clf.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    hook = clf.model.get_input_embeddings().register_forward_hook(lambda m, a, o: emb)
    res = clf.model(**inputs, output_hidden_states=True)
    clean = layer_consistency(res.hidden_states, batch["attention_mask"])
    (grad,) = torch.autograd.grad(clean, emb)
    hook.remove()
    pushed = (emb + 0.05 * grad.sign()).detach()
    hook = clf.model.get_input_embeddings().register_forward_hook(lambda m, a, o: pushed)
    adv = layer_consistency(clf.model(**inputs, output_hidden_states=True).hidden_states, batch["attention_mask"])
    hook.remove()
    ce = F.cross_entropy(res.logits, batch["labels"])
    assert out.terms["consistency_adv"] == pytest.approx(float(adv.detach()), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float((ce + 2.0 * adv).detach()), rel=1e-5)


def test_relational_alignment_at_three_depths_with_a_decaying_gamma_runs_and_logs_gamma(victim, tiny_splits, rt,
                                                                                        tmp_path):
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, victim, rt,
                tmp_path / "teacher", seed=0)
    settings = {"alignment": "relational", "depths": [0.5, 1.0], "gamma": 1.0, "gamma_final": 0.0}
    cfg = DefenseConfig(settings=settings, train=TrainConfig(**{**LORA.__dict__, "epochs": 2.0, "eval_every": 4}))
    metrics = run_defense(DefenseJob(victim, str(tmp_path / "teacher"), tiny_splits, cfg, rt, tmp_path / "w2s", seed=3))
    gammas = [h["gamma"] for h in metrics.history]
    assert gammas == sorted(gammas, reverse=True) and gammas[0] < 1.0 and gammas[-1] < 0.2
    assert all(0 <= h["fa"] <= 4 for h in metrics.history)
