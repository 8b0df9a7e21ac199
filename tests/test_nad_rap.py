"""NAD and RAP on tiny models: their maps, objectives and hooks against hand computations, NAD's fairness
with lora-ft, RAP's calibration and its saved filter."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from w2sdefense.config import DefenseConfig, LoraConfig, TrainConfig
from w2sdefense.defenses import DefenseJob, open_filter, resolve, run_defense
from w2sdefense.defenses.nad import attention_maps, cache_teacher_maps, nad_distance
from w2sdefense.defenses.rap import perturbed, rap_objective, word_slots
from w2sdefense.errors import UserError
from w2sdefense.models import load_classifier
from w2sdefense.train.job import run_train

FAST = dict(epochs=1.0, lr=5e-3, batch_size=8, max_length=32, warmup_ratio=0.0)
LORA = dict(method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.1}, **FAST)


@pytest.fixture
def victim(tiny_splits, rt, tmp_path):
    run_train("tiny-llama", tiny_splits, TrainConfig(method="full", **FAST), rt, tmp_path / "victim", seed=0)
    return str(tmp_path / "victim")


def test_attention_map_is_the_normalised_channel_mean_of_powers_over_real_tokens():
    h = torch.tensor([[[1.0, -3.0], [2.0, 2.0], [9.0, 9.0]]])  # one row, 3 tokens (the last is padding), 2 channels
    mask = torch.tensor([[1, 1, 0]])
    maps = attention_maps((torch.zeros_like(h), h), mask, layers=1, p=2.0)
    # mean of squares: token 0 -> (1 + 9) / 2 = 5, token 1 -> (4 + 4) / 2 = 4, padding -> 0; then unit norm
    expected = torch.tensor([5.0, 4.0, 0.0]) / (41 ** 0.5)
    assert maps.shape == (1, 1, 3) and torch.allclose(maps[0, 0], expected)
    both = attention_maps((h, 2 * h), mask, layers=2, p=1.0)
    assert torch.allclose(both[0, 0], both[0, 1])  # a scaled layer has the same map
    assert nad_distance(both, both) == 0
    other = torch.zeros_like(both)
    other[..., 0] = 1.0
    assert nad_distance(both, other) == pytest.approx(2 * ((both[0, 0] - other[0, 0]) ** 2).sum().item())


def test_nad_with_beta_zero_trains_exactly_the_lora_ft_adapter(victim, tiny_splits, rt, tmp_path):
    # NAD fine-tunes its own teacher first; the student still starts from lora-ft's adapter and head.
    m = run_defense(DefenseJob(victim, None, tiny_splits,
                               DefenseConfig(name="nad", settings={"beta": 0.0, "layers": 2}, train=LORA), rt,
                               tmp_path / "nad", seed=3))
    run_defense(DefenseJob(victim, None, tiny_splits, DefenseConfig(name="lora-ft", train=LORA), rt,
                           tmp_path / "ft", seed=3))
    nad, ft = (load_file(str(tmp_path / f / "model" / "adapter_model.safetensors")) for f in ("nad", "ft"))
    assert nad.keys() == ft.keys()
    assert all(torch.equal(nad[k], ft[k]) for k in nad)
    assert m.details["teacher_steps"] > 0 and (tmp_path / "nad" / "teacher" / "model").is_dir()


def test_nad_pulls_the_students_maps_towards_its_teachers(victim, tiny_splits, rt, tmp_path):
    cfg = DefenseConfig(name="nad", settings={"beta": 1000.0, "layers": 2, "teacher_epochs": 2.0},
                        train={**LORA, "epochs": 3.0})
    settings = resolve(cfg).settings
    run_defense(DefenseJob(victim, None, tiny_splits, cfg, rt, tmp_path / "nad", seed=0))
    teacher = cache_teacher_maps(load_classifier(str(tmp_path / "nad" / "teacher"), 2), tiny_splits.train,
                                 settings, 32, 16, rt)

    def distance(model_dir: str) -> float:
        maps = cache_teacher_maps(load_classifier(model_dir, 2), tiny_splits.train, settings, 32, 16, rt)
        return sum(float(((maps[i] - teacher[i]) ** 2).sum()) for i in teacher) / len(teacher)

    assert distance(str(tmp_path / "nad")) < 0.5 * distance(victim)
    with pytest.raises(UserError, match="nad.layers=9, but the model has 2 layers"):
        run_defense(DefenseJob(victim, None, tiny_splits, DefenseConfig(name="nad", settings={"layers": 9}, train=LORA),
                               rt, tmp_path / "nad9", seed=0))


def test_rap_word_slots_and_the_embedding_hook(victim):
    clf = load_classifier(victim, 2)
    start, word_ids = word_slots(clf.tokenizer, "cf")
    count = len(word_ids)
    ids = clf.tokenizer("cf a good film", return_tensors="pt")["input_ids"]
    assert word_ids == clf.tokenizer("cf", add_special_tokens=False)["input_ids"]
    assert ids[0, start:start + count].tolist() == word_ids
    model = clf.model.eval()
    emb = model.get_input_embeddings()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with perturbed(model, emb.weight[word_ids], start):  # the word's own embedding: nothing changes
            assert torch.allclose(model(input_ids=ids).logits, plain)
        vectors = torch.randn(count, emb.embedding_dim)
        with perturbed(model, vectors, start):
            hooked = model(input_ids=ids).logits
        embeds = emb(ids).clone()
        embeds[0, start:start + count] = vectors
        assert torch.allclose(hooked, model(inputs_embeds=embeds).logits, atol=1e-5)
        assert torch.allclose(model(input_ids=ids).logits, plain)  # the hook is gone afterwards


def test_rap_objective_by_hand():
    drops = torch.tensor([0.05, 0.2, 0.5])
    assert rap_objective(drops, 0.1, 0.3).item() == pytest.approx((0.05 + 0.0 + 0.2) / 3)


def test_rap_trains_calibrates_and_saves_its_filter(victim, tiny_splits, rt, tmp_path):
    cfg = DefenseConfig(name="rap", settings={"epochs": 4, "lr": 0.05, "frr": 0.25, "max_length": 32})
    m = run_defense(DefenseJob(victim, None, tiny_splits, cfg, rt, tmp_path / "rap", seed=0))
    assert m.steps == 4 * 2 and m.details["rap_loss_per_epoch"][-1] < m.details["rap_loss_per_epoch"][0]
    assert 0 < m.details["dev_false_rejection_rate"] <= 0.25
    flt, record = open_filter(tmp_path / "rap")
    assert record["defense"] == "rap" and flt.threshold == pytest.approx(m.details["threshold"])
    texts = [e.text for e in tiny_splits.dev]
    screened = flt.screen(load_classifier(victim, 2), texts, rt)
    assert sum(screened.rejected) / len(texts) == pytest.approx(m.details["dev_false_rejection_rate"])
    assert [d < flt.threshold for d in screened.scores] == screened.rejected
    with pytest.raises(UserError, match="rap needs 0 <= drop_min < drop_max"):
        resolve(DefenseConfig(name="rap", settings={"drop_min": 0.5, "drop_max": 0.2}))
