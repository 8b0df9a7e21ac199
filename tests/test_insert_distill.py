"""insert-distill: each copy is its text with a run of another text's words inserted (nothing else changed), the
copies are answered with their originals' suspect outputs, and with no copies and no distillation it trains exactly
what lora-ft trains."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from safetensors.torch import load_file

from w2sdefense.config import DefenseConfig
from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses import DefenseJob, resolve, run_defense
from w2sdefense.defenses.distill import SuspectLogits
from w2sdefense.defenses.insert_distill import phrase_copies, with_copies
from w2sdefense.errors import UserError

from conftest import synthetic_examples
from test_reset_and_controls import LORA, base_and_victim  # noqa: F401  (a fixture: a tiny base and its fine-tune)


def _runs(words: list[str], inner: list[str]) -> bool:
    return any(words[i:i + len(inner)] == inner for i in range(len(words) - len(inner) + 1))


def test_each_copy_is_its_text_with_a_run_of_another_texts_words_inserted():
    rows = [Example("a b c d e f", 0, 3), Example("g h i j", 1, 7), Example(f"{' '.join('klmnopqrstuvwxyz')}", UNLABELLED, 9)]
    made, source = phrase_copies(rows, 2, 2, 3, 24, random.Random(0))
    assert len(made) == 6 and [e.idx for e in made] == list(range(10, 16))  # new ids, above every row's
    assert source == {10: 3, 11: 7, 12: 9, 13: 3, 14: 7, 15: 9}
    by_id = {r.idx: r for r in rows}
    for copy in made:
        original = by_id[source[copy.idx]]
        assert copy.label == original.label and not copy.poisoned
        words, own = copy.text.split(), original.text.split()
        inserted = len(words) - len(own)
        assert 2 <= inserted <= 3
        # Exactly one contiguous run was inserted between two of its words, and it came from another text.
        spots = [i for i in range(1, len(own)) if words[:i] + words[i + inserted:] == own]
        assert spots, copy.text
        run = words[spots[0]:spots[0] + inserted]
        assert any(_runs(r.text.split(), run) for r in rows if r.idx != original.idx)
    assert phrase_copies(rows, 0, 2, 5, 24, random.Random(0)) == ([], {})
    again, _ = phrase_copies(rows, 2, 2, 3, 24, random.Random(0))
    assert again == made  # seeded


def test_the_phrase_lands_within_the_first_words_asked():
    long = Example(" ".join(f"w{i}" for i in range(60)), 1, 0)
    donor = Example("x1 x2 x3 x4", 0, 1)
    for seed in range(20):
        made, _ = phrase_copies([long, donor], 1, 2, 2, 5, random.Random(seed))
        words = made[0].text.split()
        first = next(i for i, w in enumerate(words) if w.startswith("x"))
        assert 1 <= first <= 5


def test_copies_are_answered_with_their_originals_suspect_outputs():
    cache = SuspectLogits(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), {3: 0, 7: 1})
    both = with_copies(cache, {10: 7, 11: 3})
    assert torch.equal(both.of(torch.tensor([10, 3, 11])), torch.tensor([[0.0, 2.0], [1.0, 0.0], [1.0, 0.0]]))


def test_settings_are_checked():
    for wrong, message in (({"copies": -1}, "copies"), ({"min_words": 4, "max_words": 2}, "above max_words"),
                           ({"beta": -1.0}, "beta"), ({"within_words": 0}, "within_words")):
        with pytest.raises(UserError, match=message):
            resolve(DefenseConfig(name="insert-distill", settings=wrong))
    with pytest.raises(UserError, match="at least two texts"):
        phrase_copies([Example("a b", 0, 0)], 1, 2, 5, 24, random.Random(0))


def _adapter(path):
    return load_file(str(path / "model" / "adapter_model.safetensors"))


def test_without_copies_or_distillation_it_trains_exactly_lora_ft_and_copies_change_it(
        base_and_victim, tiny_splits, rt, tmp_path):
    _, victim_dir = base_and_victim

    def run(name, out, splits=tiny_splits, **settings):
        cfg = DefenseConfig(name=name, settings=settings, train=LORA)
        return run_defense(DefenseJob(victim_dir, None, splits, cfg, rt, tmp_path / out, seed=3))

    run("lora-ft", "ft")
    run("insert-distill", "id0", copies=0, beta=0.0)
    ft, id0 = _adapter(tmp_path / "ft"), _adapter(tmp_path / "id0")
    assert ft.keys() == id0.keys() and all(torch.equal(ft[k], id0[k]) for k in ft)
    texts = [dataclasses.replace(e, idx=1000 + e.idx, label=UNLABELLED) for e in synthetic_examples(24, 2, 9)]
    result = run("insert-distill", "id", dataclasses.replace(tiny_splits, unlabelled=texts))
    assert result.details["copies"] == len(tiny_splits.train) + 24
    assert result.details["train_rows"] == 2 * (len(tiny_splits.train) + 24)
    moved = _adapter(tmp_path / "id")
    assert any(not torch.equal(ft[k], moved[k]) for k in ft)
