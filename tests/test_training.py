"""The training loop, LoRA wrapping, the teacher and the defenses on tiny models built in code."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from w2sdefense.config import DefenseConfig, LoraConfig, TeacherConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, run_defense
from w2sdefense.defenses.teacher import run_teacher
from w2sdefense.models.teacher import TeacherClassifier, build_teacher, load_teacher
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode
from w2sdefense.models.predict import predict_logits
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
    reloaded = load_classifier(str(tmp_path), 2)  # a run folder loads through its model/
    assert reloaded.model.config.num_labels == 2
    # The saved checkpoint is the selected one: its dev accuracy, counted here, is the one recorded.
    dev = encode(reloaded.tokenizer, tiny_splits.dev, cfg.max_length)
    preds = predict_logits(reloaded.model, dev, reloaded.tokenizer.pad_token_id, 8, rt).argmax(-1).tolist()
    correct = sum(p == ex.label for p, ex in zip(preds, tiny_splits.dev))
    assert metrics["selected_dev_accuracy"] == metrics["best_dev_accuracy"] == correct / 16
    assert metrics["best_dev_accuracy"] == max(h["dev_accuracy"] for h in metrics["history"])
    assert not (tmp_path / "metrics.json").exists()  # the stage that trains records it (record_stage)


def test_each_stage_writes_its_metrics_once_with_one_wall_time(tiny_splits, rt, tmp_path, monkeypatch):
    import w2sdefense.fileio as fileio
    from w2sdefense.config import DefenseConfig, TeacherConfig
    from w2sdefense.defenses import DefenseJob, run_defense
    from w2sdefense.defenses.teacher import run_teacher

    writes: list[str] = []
    real = fileio.atomic_write_text
    monkeypatch.setattr(fileio, "atomic_write_text", lambda path, text: (writes.append(str(path)), real(path, text)))
    cfg = TrainConfig(method="full", **FAST)
    run_train("tiny-llama", tiny_splits, cfg, rt, tmp_path / "victim", seed=0)
    run_teacher(TeacherConfig(model="tiny-bert", train=cfg), tiny_splits, str(tmp_path / "victim"), rt,
                tmp_path / "teacher", seed=0)
    lora = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST)
    for name in ("lora-ft", "w2sdefense", "nad"):
        run_defense(DefenseJob(str(tmp_path / "victim"), str(tmp_path / "teacher"), tiny_splits,
                               DefenseConfig(name=name, train=lora, settings={"layers": 1} if name == "nad" else {}),
                               rt, tmp_path / name, seed=0))
    stages = {"victim": "train", "teacher": "teacher", "lora-ft": "defense", "w2sdefense": "defense",
              "nad": "defense", "nad/teacher": "nad teacher"}
    for folder, kind in stages.items():
        path = tmp_path / folder / "metrics.json"
        assert writes.count(str(path)) == 1, folder
        record = json.loads(path.read_text())
        assert record["stage"] == kind and record["wall_time_s"] >= record["train_wall_time_s"] > 0
        assert not {k for k in record if k.endswith("wall_time_s")} - {"wall_time_s", "train_wall_time_s",
                                                                       "teacher_wall_time_s"}


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
    assert metrics.steps == 10
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
    assert metrics.feature_dim == 64
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
    cfg = DefenseConfig(settings={"alignment": alignment},
                        train=TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST))
    student_before = load_classifier(str(victim), 2).model
    metrics = run_defense(DefenseJob(str(victim), str(teacher), tiny_splits, cfg, rt, tmp_path / "d", 0))
    assert {"ce", "kd", "fa", "loss"} <= set(metrics.history[0])
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
    assert metrics.settings["alignment"] == alignment and metrics.trainable_params < metrics.total_params


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
    assert metrics.feature_dim == 48  # the student's width, not the teacher's (64)
    head = load_file(str(tmp_path / "teacher" / "model" / "head.safetensors"))
    assert head["proj.weight"].shape == (48, 64)


def test_large_teacher_caches_spill_to_disk_with_the_same_values(poisoned_and_teacher, tiny_splits, rt, tmp_path,
                                                                  monkeypatch):
    from w2sdefense.defenses import w2sdefense as w2s

    _, teacher_dir = poisoned_and_teacher
    teacher = load_teacher(teacher_dir)
    in_memory = w2s.cache_teacher_outputs(teacher, tiny_splits.train, 32, 16, rt, spill_dir=tmp_path / "spill")
    assert not (tmp_path / "spill").exists()
    monkeypatch.setattr(w2s, "IN_MEMORY_LIMIT", 0)
    on_disk = w2s.cache_teacher_outputs(teacher, tiny_splits.train, 32, 16, rt, spill_dir=tmp_path / "spill")
    assert (tmp_path / "spill" / "teacher_features.rank0.npy").is_file()
    torch.testing.assert_close(on_disk.features, in_memory.features)
    torch.testing.assert_close(on_disk.logits, in_memory.logits)


def test_max_length_beyond_the_models_positions_is_cut_to_them_with_a_warning(tiny_splits, rt, tmp_path, caplog):
    from w2sdefense.data.records import Example, Splits
    from w2sdefense.models.batching import encode

    long = [Example("good fun " * 300, ex.label, ex.idx) for ex in tiny_splits.train[:8]]  # 2700 tokens each
    splits = Splits(train=long, dev=tiny_splits.dev, test=tiny_splits.test, num_labels=2)
    clf = load_classifier("tiny-bert", 2)
    assert clf.tokenizer.model_max_length == clf.model.config.max_position_embeddings == 1024
    assert max(encode(clf.tokenizer, long, 2048).lengths) == 1024
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        metrics = run_train("tiny-bert", splits, TrainConfig(max_steps=1, batch_size=8, max_length=2048), rt, tmp_path,
                            seed=0)
    assert metrics.steps == 1
    assert "max_length=2048" in caplog.text and "1024" in caplog.text
    assert load_classifier(str(tmp_path), 2).tokenizer.model_max_length <= 1024  # a saved checkpoint too


def test_w2sdefense_refuses_a_teacher_of_other_labels_before_any_work(tiny_splits, splits_factory, rt, tmp_path):
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), splits_factory(3), "tiny-llama", rt,
                tmp_path / "teacher", seed=0)
    cfg = DefenseConfig(train=TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST))
    with pytest.raises(UserError, match=r"the teacher .*teacher classifies 3 labels, but the student tiny-llama "
                                        r"and its data have 2"):
        run_defense(DefenseJob("tiny-llama", str(tmp_path / "teacher"), tiny_splits, cfg, rt, tmp_path / "d", 0))
    assert not (tmp_path / "d").exists()


def test_a_moved_lora_run_finds_its_base_beside_it(tiny_splits, rt, tmp_path):
    from w2sdefense.models.teacher import hidden_size_of

    first = tmp_path / "a" / "run"
    run_train("tiny-llama", tiny_splits, TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST), rt, first,
              seed=0)
    recorded = json.loads((first / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((first / "base").resolve())  # an absolute path, gone once the run moves
    batch = load_classifier(str(first), 2).tokenizer(["good fun", "awful"], return_tensors="pt", padding=True)
    expected = load_classifier(str(first), 2).model.eval()(**batch).logits.detach()
    moved = tmp_path / "b" / "run"
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    torch.testing.assert_close(load_classifier(str(moved), 2).model.eval()(**batch).logits.detach(), expected)
    torch.testing.assert_close(load_classifier(str(moved / "model"), 2).model.eval()(**batch).logits.detach(), expected)
    assert hidden_size_of(str(moved)) == 64
    shutil.rmtree(moved / "base")
    with pytest.raises(UserError, match=rf"{moved / 'model'}: its base model {recorded} is not there"):
        load_classifier(str(moved), 2)


def test_a_teacher_is_not_loaded_as_a_classifier(tiny_splits, rt, tmp_path):
    run_teacher(TeacherConfig(model="tiny-bert", train=TrainConfig(**FAST)), tiny_splits, "tiny-llama", rt,
                tmp_path / "teacher", seed=0)
    for name in (tmp_path / "teacher", tmp_path / "teacher" / "model"):
        with pytest.raises(UserError, match=r"is a W2SDefense teacher \(it has teacher.json\).*`evaluate --model` measures it"):
            load_classifier(str(name), 2)


def test_a_copied_lora_run_keeps_its_own_base_when_the_original_changes(tiny_splits, rt, tmp_path):
    lora = TrainConfig(method="lora", lora=LoraConfig(r=4, alpha=8), **FAST)
    original, copy = tmp_path / "run", tmp_path / "copy"
    run_train("tiny-llama", tiny_splits, lora, rt, original, seed=0)
    shutil.copytree(original, copy)
    batch = load_classifier(str(copy), 2).tokenizer(["good fun", "awful"], return_tensors="pt", padding=True)
    expected = load_classifier(str(copy), 2).model.eval()(**batch).logits.detach()
    # The original is trained again from another seed: its base/ (a tiny model built in code) changes.
    run_train("tiny-llama", tiny_splits, lora, rt, tmp_path / "other", seed=1)
    shutil.rmtree(original / "base")
    shutil.copytree(tmp_path / "other" / "base", original / "base")
    torch.testing.assert_close(load_classifier(str(copy), 2).model.eval()(**batch).logits.detach(), expected)


def test_progress_goes_to_a_log_as_whole_lines(tiny_splits, rt, tmp_path, capsys, monkeypatch):
    # stderr is not a terminal here (captured), as under nohup or `2> log`: no tqdm frames, only lines.
    import w2sdefense.progress

    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(w2sdefense.progress, "EVERY_S", 0.0)  # a periodic line at every step
    hf_logging.disable_progress_bar()  # as the CLI does (cli._quiet_libraries): transformers' own bars
    try:
        run_train("tiny-llama", tiny_splits, TrainConfig(**FAST), rt, tmp_path / "run", seed=0)
    finally:
        hf_logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert lines[0].startswith("train: step 0/8,") and lines[0].endswith("; started")
    assert [line.split(",")[0] for line in lines[1:-1]] == [f"train: step {i}/8" for i in range(1, 9)]
    assert "ce=" in lines[1] and "step/s" in lines[1]
    assert lines[-1].startswith("train: step 8/8, ce=") and lines[-1].endswith("; done")


def test_the_gguf_conversion_writes_no_bar_frames_to_a_log(tmp_path, capsys, monkeypatch):
    # transformers' GGUF loader draws its own tqdm bar whatever its progress-bar switch says; in a log
    # (stderr not a terminal, as here) the conversion keeps only its one "converting ..." line.
    import transformers
    from tqdm.auto import tqdm

    from w2sdefense.models import packaged

    def drawing_load(*args, **kwargs):
        for _ in tqdm(range(50), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        raise ValueError("not a GGUF file")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", drawing_load)
    spec = packaged.PackagedModel("fake", "fake_pkg", "fake==0", "model.gguf")
    with pytest.raises(UserError, match=r"could not read .*model\.gguf as a GGUF checkpoint: not a GGUF file"):
        packaged._convert_gguf(spec, tmp_path / "model.gguf", tmp_path / "out")
    err = capsys.readouterr().err
    assert "Converting" not in err and "\r" not in err


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from w2sdefense.models import check_model_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "victim").mkdir(parents=True)
    with pytest.raises(UserError, match=r"^unknown model 'runs/victimm': not a local folder \(runs/ has no victimm\), "
                                        r"and not a hub id cached here, so nothing was downloaded"):
        load_classifier("runs/victimm", 2)
    check_model_name("someorg/somemodel")  # no local someorg/: a hub id, which loading may download
