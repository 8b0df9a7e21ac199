"""The weight reset toward a public base (fine-mixing, W2SDefense's reset) and the teacher controls
(zero teacher, random teacher), on tiny models saved to disk like a user's checkpoints."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForSequenceClassification

from w2sdefense.config import DefenseConfig, LoraConfig, TeacherConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.teacher import run_teacher
from w2sdefense.defenses.w2sdefense import W2SSettings, cache_teacher_outputs, w2s_loss, zero_cache
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode, make_loader, sorted_batches
from w2sdefense.models.reset import backbone, reset_student, reset_toward_base
from w2sdefense.models.teacher import load_teacher
from w2sdefense.models.tiny import build_tiny
from w2sdefense.train.job import run_train

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)
LORA = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.1), **FAST)
W2S = {"alpha": 5.0, "beta": 0.001, "gamma": 0.01}


@pytest.fixture
def base_and_victim(tiny_splits, rt, tmp_path):
    """A 'public' tiny Llama saved with save_pretrained, and a full fine-tune of it (the suspect)."""
    model, tok = build_tiny("tiny-llama", 2)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    run_train(str(tmp_path / "base"), tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    return str(tmp_path / "base"), str(tmp_path / "victim")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_reset_at_rho_one_is_the_victim_and_at_rho_zero_the_base_backbone_with_the_victims_head(base_and_victim):
    base_dir, victim_dir = base_and_victim
    victim = load_classifier(victim_dir, 2).model
    base = load_classifier(base_dir, 2).model
    original = _weights(victim)
    assert any(not torch.equal(original[k], v) for k, v in _weights(base).items() if k.startswith("model."))
    for mix in ("mask", "interpolate"):
        model = load_classifier(victim_dir, 2).model
        reset_toward_base(model, base, 1.0, mix, torch.Generator().manual_seed(0))
        assert all(torch.equal(original[k], v) for k, v in _weights(model).items()), mix
        reset_toward_base(model, base, 0.0, mix, torch.Generator().manual_seed(0))
        for key, value in _weights(model).items():
            # The backbone is the base's; the classification head stays the victim's.
            expected = base.state_dict()[key] if key.startswith("model.") else original[key]
            assert torch.equal(value, expected), (mix, key)
        assert torch.equal(model.score.weight, original["score.weight"])


def test_a_masked_reset_keeps_each_weight_from_one_side_about_rho_of_them_and_is_seeded(base_and_victim):
    base_dir, victim_dir = base_and_victim
    base = load_classifier(base_dir, 2).model
    victim = _weights(load_classifier(victim_dir, 2).model)
    runs = []
    for seed in (1, 1, 2):
        model = load_classifier(victim_dir, 2).model
        record = reset_toward_base(model, base, 0.3, "mask", torch.Generator().manual_seed(seed))
        runs.append(_weights(model))
        assert record["reset_kept_share"] == pytest.approx(0.3, abs=0.02)
    w, b, v = runs[0]["model.layers.0.mlp.down_proj.weight"], base.state_dict()["model.layers.0.mlp.down_proj.weight"], \
        victim["model.layers.0.mlp.down_proj.weight"]
    assert bool(((w == b) | (w == v)).all())  # every weight is one side's, never a blend
    kept = (w == v) & (v != b)
    assert 0.2 < kept.float().mean() < 0.4
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # the same seed, the same mask
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_interpolation_moves_every_changed_weight_by_the_same_share(base_and_victim):
    base_dir, victim_dir = base_and_victim
    base = load_classifier(base_dir, 2).model
    victim = _weights(load_classifier(victim_dir, 2).model)
    model = load_classifier(victim_dir, 2).model
    reset_toward_base(model, base, 0.25, "interpolate", torch.Generator())
    key = "model.layers.1.self_attn.q_proj.weight"
    expected = base.state_dict()[key] + 0.25 * (victim[key] - base.state_dict()[key])
    assert torch.allclose(model.state_dict()[key], expected, atol=1e-6)


def test_a_base_of_another_architecture_or_width_is_refused_in_one_sentence(base_and_victim, tmp_path):
    _, victim_dir = base_and_victim
    suspect = load_classifier(victim_dir, 2)
    victim = suspect.model
    with pytest.raises(UserError, match="is a BertModel, the suspect model a LlamaModel"):
        reset_student(suspect, "tiny-bert", 0.5, "mask", 0)
    wider = LlamaForSequenceClassification(LlamaConfig(**{**victim.config.to_dict(), "intermediate_size": 256}))
    wider.save_pretrained(tmp_path / "wider")
    load_classifier(victim_dir, 2).tokenizer.save_pretrained(tmp_path / "wider")
    with pytest.raises(UserError, match="does not match the suspect model .shapes differ"):
        reset_student(suspect, str(tmp_path / "wider"), 0.5, "mask", 0)
    assert backbone(victim) is victim.model


def test_a_lora_run_given_as_the_base_is_its_adapter_folded_in(base_and_victim, tiny_splits, rt, tmp_path):
    base_dir, victim_dir = base_and_victim
    run_train(base_dir, tiny_splits, LORA, rt, tmp_path / "lora", seed=0)
    lora = str(tmp_path / "lora")
    suspect = load_classifier(victim_dir, 2)
    model = suspect.model
    reset_student(suspect, lora, 0.0, "mask", 0)  # was refused: 'a LlamaForSequenceClassification, ... a LlamaModel'
    merged = dict(backbone(load_classifier(lora, 2).model.merge_and_unload()).named_parameters())
    public = dict(backbone(load_classifier(base_dir, 2).model).named_parameters())
    assert all(torch.equal(p, merged[name]) for name, p in backbone(model).named_parameters())
    assert any(not torch.equal(p, public[name]) for name, p in merged.items())  # the adapter's change is in it


def test_fine_mixing_needs_a_base_and_checks_rho_and_mix_before_any_work():
    with pytest.raises(UserError, match="fine-mixing needs base_model"):
        resolve(DefenseConfig(name="fine-mixing"))
    with pytest.raises(UserError, match=r"rho must be in \[0, 1\]"):
        resolve(DefenseConfig(name="fine-mixing", settings={"base_model": "x", "rho": 1.5}))
    with pytest.raises(UserError, match="mix"):
        resolve(DefenseConfig(name="w2sdefense", settings={"base_model": "x", "mix": "average"}))
    with pytest.raises(UserError, match="teacher_mode"):
        resolve(DefenseConfig(name="w2sdefense", settings={"teacher_mode": "none"}))


def test_fine_mixing_at_rho_one_trains_exactly_lora_ft_and_at_rho_zero_starts_from_the_base(
        base_and_victim, tiny_splits, rt, tmp_path):
    base_dir, victim_dir = base_and_victim

    def run(name, out, **settings):
        cfg = DefenseConfig(name=name, settings=settings, train=LORA)
        return run_defense(DefenseJob(victim_dir, None, tiny_splits, cfg, rt, tmp_path / out, seed=3))

    run("lora-ft", "ft")
    metrics = run("fine-mixing", "keep-all", base_model=base_dir, rho=1.0)
    assert metrics.details["reset_base"] == base_dir and metrics.details["reset_kept_share"] == 1.0
    ft, kept = (load_file(str(tmp_path / d / "model" / "adapter_model.safetensors")) for d in ("ft", "keep-all"))
    assert ft.keys() == kept.keys() and all(torch.equal(ft[k], kept[k]) for k in ft)
    run("fine-mixing", "reset-all", base_model=base_dir, rho=0.0)
    # The adapter's base (saved by the defense) is the public backbone with the suspect's head.
    saved = load_classifier(str(tmp_path / "reset-all" / "base"), 2).model.state_dict()
    public, suspect = load_classifier(base_dir, 2).model.state_dict(), load_classifier(victim_dir, 2).model.state_dict()
    assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"], public["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(saved["score.weight"], suspect["score.weight"])


@pytest.fixture
def teacher_dir(base_and_victim, tiny_splits, rt, tmp_path):
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, base_and_victim[1], rt,
                tmp_path / "teacher", seed=0)
    return str(tmp_path / "teacher")


def test_the_zero_teacher_loss_is_alpha_ce_plus_gamma_times_the_squared_norm(base_and_victim, teacher_dir, tiny_splits):
    clf = load_classifier(base_and_victim[1], 2)
    rows = tiny_splits.train
    encoded = encode(clf.tokenizer, rows, 32)
    batch = next(iter(make_loader(encoded, sorted_batches(encoded.lengths, 8), clf.tokenizer.pad_token_id)))
    settings = W2SSettings(**W2S, teacher_mode="zeros")
    out = w2s_loss(settings, zero_cache(rows, clf.config.hidden_size), True, torch.device("cpu"))(clf.model, batch)
    # By hand: the pooled last-layer state's squared norm, and cross-entropy; no KD.
    with torch.no_grad():
        res = clf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        last = batch["attention_mask"].sum(1) - 1
        pooled = res.hidden_states[-1][torch.arange(len(last)), last]
        ce = torch.nn.functional.cross_entropy(res.logits, batch["labels"])
    assert out.terms["kd"] == 0.0
    assert out.terms["fa"] == pytest.approx(float(pooled.pow(2).sum(-1).mean()), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(5.0 * ce + 0.01 * pooled.pow(2).sum(-1).mean()), rel=1e-5)
    # ... which is W2SDefense's loss with a teacher whose features are zeros and whose KD weight is 0.
    from w2sdefense.defenses.w2sdefense import TeacherCache

    real = cache_teacher_outputs(load_teacher(teacher_dir), rows, 32, 16, _cpu())
    zeroed = TeacherCache(real.logits, torch.zeros_like(real.features), real.row_of)
    same = w2s_loss(W2SSettings(alpha=5.0, beta=0.0, gamma=0.01), zeroed, True, torch.device("cpu"))(clf.model, batch)
    assert float(same.loss.detach()) == pytest.approx(float(out.loss.detach()), rel=1e-6)


def _cpu():
    from w2sdefense.config import RuntimeConfig
    from w2sdefense.runtime import make_runtime

    return make_runtime(RuntimeConfig(device="cpu", num_threads=2))


def test_the_random_teacher_has_the_trained_ones_shape_but_not_its_weights_and_is_seeded(teacher_dir):
    trained = load_teacher(teacher_dir).model.state_dict()
    first, again, other = (load_teacher(teacher_dir, random_init_seed=s).model.state_dict() for s in (5, 5, 6))
    assert first.keys() == trained.keys()
    assert all(first[k].shape == trained[k].shape for k in trained)
    assert not torch.equal(first["head.proj.weight"], trained["head.proj.weight"])
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["head.proj.weight"], other["head.proj.weight"])


def test_the_controls_and_the_reset_run_as_w2sdefense_settings(base_and_victim, teacher_dir, tiny_splits, rt, tmp_path):
    base_dir, victim_dir = base_and_victim
    adapters = {}
    for label, extra in [("default", {}), ("zeros", {"teacher_mode": "zeros"}), ("random", {"teacher_mode": "random"}),
                         ("reset", {"base_model": base_dir, "rho": 0.5})]:
        cfg = DefenseConfig(settings={**W2S, **extra}, train=LORA, label=label)
        metrics = run_defense(DefenseJob(victim_dir, teacher_dir, tiny_splits, cfg, rt, tmp_path / label, seed=3))
        assert metrics.settings["teacher_mode"] == extra.get("teacher_mode", "trained")
        assert ("reset_rho" in metrics.details) == (label == "reset")
        adapters[label] = load_file(str(tmp_path / label / "model" / "adapter_model.safetensors"))
    for label in ("zeros", "random", "reset"):  # each control trains another adapter than the default
        assert any(not torch.equal(adapters[label][k], v) for k, v in adapters["default"].items()), label


def test_the_reset_refuses_the_suspect_as_its_own_base_and_records_how_far_the_suspect_is(base_and_victim, tiny_splits,
                                                                                          rt, tmp_path):
    base_dir, victim_dir = base_and_victim
    with pytest.raises(UserError, match="exactly the suspect's backbone weights"):
        reset_student(load_classifier(victim_dir, 2), victim_dir, 0.0, "mask", 0)
    record = reset_student(load_classifier(victim_dir, 2), base_dir, 0.0, "mask", 0)
    victim, base = (backbone(load_classifier(d, 2).model) for d in (victim_dir, base_dir))
    moved = sum(float((p - q).pow(2).sum()) for p, q in zip(victim.parameters(), base.parameters()))
    norm = sum(float(q.pow(2).sum()) for q in base.parameters())
    assert record["suspect_base_relative_distance"] == pytest.approx((moved / norm) ** 0.5, rel=1e-5)
    assert record["suspect_base_relative_distance"] > 0


def test_w2sdefense_takes_the_resets_head_and_tokenizer_only_with_a_base():
    assert W2SSettings(base_model="tiny-llama", head="fresh", tokenizer="base").head == "fresh"
    for key, value in (("head", "fresh"), ("tokenizer", "base")):
        with pytest.raises(UserError, match="without defense.base_model there is no reset"):
            W2SSettings(**{key: value})
    with pytest.raises(UserError, match="defense.head must be one of"):
        W2SSettings(base_model="tiny-llama", head="new")
