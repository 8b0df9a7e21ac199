"""The training loop, LoRA wrapping, the teacher and the defenses on tiny models built in code."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from w2sdefense.config import DefenseConfig, LoraConfig, TeacherConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, run_defense
from w2sdefense.defenses.teacher import TeacherClassifier, build_teacher, load_teacher, run_teacher
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.train.job import prepare_student, run_train, train_classifier

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before: dict, model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_full_finetune_changes_every_weight_and_saves_hf_format(tiny_splits, rt, tmp_path):
    cfg = TrainConfig(method="full", **FAST)
    clf = prepare_student("tiny-llama", 2, cfg, rt, tmp_path, seed=0)
    before = _snapshot(clf.model)
    metrics = train_classifier(clf, tiny_splits, cfg, rt, tmp_path, seed=0)
    changed = _changed(before, clf.model)
    assert "score.weight" in changed
    assert any("layers.0.self_attn.q_proj" in n for n in changed)
    assert metrics["steps"] == 8 and metrics["trainable_params"] == metrics["total_params"]
    assert 0.0 <= metrics["best_dev_accuracy"] <= 1.0 and metrics["history"]
    reloaded = load_classifier(str(tmp_path), 2)  # a run folder loads through its model/
    assert reloaded.model.config.num_labels == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 8


def test_lora_changes_only_adapter_and_head(tiny_splits, rt, tmp_path):
    cfg = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0), **FAST)
    clf = prepare_student("tiny-llama", 2, cfg, rt, tmp_path, seed=0)
    before = _snapshot(clf.model)
    metrics = train_classifier(clf, tiny_splits, cfg, rt, tmp_path, seed=0)
    changed = _changed(before, clf.model)
    assert changed, "nothing trained"
    assert all("lora_" in n or ".score." in n for n in changed), changed
    assert any("lora_B" in n for n in changed) and any(".score." in n for n in changed)
    frozen = [n for n in before if "lora_" not in n and "score" not in n]
    assert frozen and not (set(frozen) & changed)
    assert metrics["trainable_params"] < metrics["total_params"] / 5
    assert (tmp_path / "model" / "adapter_config.json").is_file()
    # The adapter reloads on its saved base and gives the trained model's outputs.
    reloaded = load_classifier(str(tmp_path / "model"), 2)
    batch = clf.tokenizer(["good fun", "awful"], return_tensors="pt", padding=True)
    clf.model.eval()
    reloaded.model.eval()
    with torch.no_grad():
        expected, got = clf.model(**batch).logits, reloaded.model(**batch).logits
    # model/ holds the best checkpoint; with one epoch that is the final one.
    torch.testing.assert_close(got, expected)


def test_merge_writes_a_plain_checkpoint(tiny_splits, rt, tmp_path):
    cfg = TrainConfig(method="lora", merge=True, lora=LoraConfig(r=4, alpha=8), **FAST)
    run_train("tiny-llama", tiny_splits, cfg, rt, tmp_path, seed=0)
    assert (tmp_path / "merged" / "config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    adapter = load_classifier(str(tmp_path / "model"), 2).model.eval()
    merged = load_classifier(str(tmp_path / "merged"), 2).model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_multiclass_training(rt, tmp_path, splits_factory):
    splits = splits_factory(num_labels=4, train=80, held_out=20)
    metrics = run_train("tiny-bert", splits, TrainConfig(method="full", **FAST), rt, tmp_path, seed=1)
    assert load_classifier(str(tmp_path), 4).model.config.num_labels == 4
    assert metrics["steps"] == 10
    with pytest.raises(UserError, match="classifies 4 labels"):
        load_classifier(str(tmp_path), 2)


@pytest.mark.parametrize("student_hidden", [64, 96])
def test_teacher_feature_follows_student_width_and_reloads(rt, tmp_path, student_hidden):
    teacher = build_teacher(TeacherConfig(model="tiny-bert"), num_labels=3, feature_dim=student_hidden, rt=rt, seed=0)
    batch = teacher.tokenizer(["a b", "c"], return_tensors="pt", padding=True)
    out = teacher.model(**batch)
    assert out.feature.shape == (2, student_hidden) and out.logits.shape == (2, 3)
    assert (out.feature >= 0).all()  # ReLU feature
    teacher.model.save_pretrained(tmp_path)
    teacher.tokenizer.save_pretrained(tmp_path)
    again = load_teacher(tmp_path)
    assert isinstance(again.model, TeacherClassifier) and not any(p.requires_grad for p in again.model.parameters())
    teacher.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.model(**batch).logits, teacher.model(**batch).logits)


def test_teacher_run_reads_student_hidden_size(tiny_splits, rt, tmp_path):
    metrics = run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, "tiny-llama",
                          rt, tmp_path, seed=0)
    assert metrics["feature_dim"] == 64
    head = load_file(str(tmp_path / "model" / "head.safetensors"))
    assert head["proj.weight"].shape == (64, 64) and head["out.weight"].shape == (2, 64)


@pytest.fixture
def poisoned_and_teacher(tiny_splits, rt, tmp_path):
    run_train("tiny-llama", tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, str(tmp_path / "victim"),
                rt, tmp_path / "teacher", seed=0)
    return tmp_path / "victim", tmp_path / "teacher"


@pytest.mark.parametrize("alignment", ["per-sample", "reference"])
def test_w2sdefense_changes_only_adapter_and_head(poisoned_and_teacher, tiny_splits, rt, tmp_path, alignment):
    victim, teacher = poisoned_and_teacher
    cfg = DefenseConfig(alignment=alignment, train=TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST))
    student_before = load_classifier(str(victim), 2).model
    metrics = run_defense(DefenseJob(str(victim), str(teacher), tiny_splits, cfg, rt, tmp_path / "d", 0))
    assert {"ce", "kd", "fa", "loss"} <= set(metrics["history"][0])
    defended = load_classifier(str(tmp_path / "d" / "model"), 2).model
    base_after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in defended.named_parameters() if "lora_" not in n and "modules_to_save" not in n
                  and "original_module" not in n}
    for name, param in student_before.named_parameters():
        if "score" in name:
            continue
        torch.testing.assert_close(base_after[name], param, msg=f"frozen weight {name} changed")
    trained_head = dict(defended.named_parameters())["base_model.model.score.modules_to_save.default.weight"]
    assert not torch.equal(trained_head, student_before.score.weight)
    assert metrics["alignment"] == alignment and metrics["trainable_params"] < metrics["total_params"]


def test_w2sdefense_needs_a_teacher(poisoned_and_teacher, tiny_splits, rt, tmp_path):
    victim, _ = poisoned_and_teacher
    with pytest.raises(UserError, match="teacher"):
        run_defense(DefenseJob(str(victim), None, tiny_splits, DefenseConfig(), rt, tmp_path / "d", 0))


def test_unknown_defense_lists_known(tiny_splits, rt, tmp_path):
    with pytest.raises(UserError, match="full-ft.*lora-ft.*w2sdefense"):
        run_defense(DefenseJob("tiny-llama", None, tiny_splits, DefenseConfig(name="nope"), rt, tmp_path, 0))


def test_teacher_width_follows_a_saved_student_of_another_width(tiny_splits, rt, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from w2sdefense.models.tiny import tiny_llama

    _, tok = tiny_llama(2)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    metrics = run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits,
                          str(tmp_path / "student"), rt, tmp_path / "teacher", seed=0)
    assert metrics["feature_dim"] == 48  # the student's width, not the teacher's (64)
    head = load_file(str(tmp_path / "teacher" / "model" / "head.safetensors"))
    assert head["proj.weight"].shape == (48, 64)


def test_large_teacher_caches_spill_to_disk_with_the_same_values(poisoned_and_teacher, tiny_splits, rt, tmp_path,
                                                                  monkeypatch):
    from w2sdefense.defenses import w2s

    _, teacher_dir = poisoned_and_teacher
    teacher = load_teacher(teacher_dir)
    in_memory = w2s.cache_teacher_outputs(teacher, tiny_splits.train, 32, 16, rt, spill_dir=tmp_path / "spill")
    assert not (tmp_path / "spill").exists()
    monkeypatch.setattr(w2s, "IN_MEMORY_LIMIT", 0)
    on_disk = w2s.cache_teacher_outputs(teacher, tiny_splits.train, 32, 16, rt, spill_dir=tmp_path / "spill")
    assert (tmp_path / "spill" / "teacher_features.rank0.npy").is_file()
    torch.testing.assert_close(on_disk.features, in_memory.features)
    torch.testing.assert_close(on_disk.logits, in_memory.logits)
