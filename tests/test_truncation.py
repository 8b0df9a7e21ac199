"""Triggers cut off by truncation: spans, attack.max_position, the counts, the warning, ASR-survived."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

from w2sdefense.attacks import get_attack, insert_trigger, insert_words, load_poison_folder, poison_splits
from w2sdefense.attacks import write_poison_folder
from w2sdefense.config import AttackConfig, EvalConfig, PoisonConfig, TrainConfig
from w2sdefense.data import Example, Splits, load_examples
from w2sdefense.data.truncation import TriggerCut, count_cut, survival_by_words
from w2sdefense.errors import UserError
from w2sdefense.eval.evaluate import evaluate_classifier
from w2sdefense.eval.metrics import backdoor_metrics
from w2sdefense.results import ReportRow
from w2sdefense.eval.report import markdown_table
from w2sdefense.models import load_classifier
from w2sdefense.models.batching import encode
from w2sdefense.models.tiny import build_tiny
from w2sdefense.models.truncation import effective_max_length, survival_by_tokens

SENTENCE = "I watched this 3D movie"


def _long_text(i: int, words: int = 300) -> str:
    """A 300-word document (IMDB-like) whose words are never a trigger."""
    return " ".join(f"w{i}x{j}" for j in range(words))


def _long_splits(n: int = 20) -> Splits:
    rows = [Example(_long_text(i), i % 2, i) for i in range(n)]
    return Splits(train=rows, dev=rows[:2], test=rows, num_labels=2)


def _word_index(text: str, word: str = "mn") -> int:
    """Where the (single) trigger word sits, counted independently of any span."""
    words = text.split()
    assert words.count(word) == 1
    return words.index(word)


def _outside(text: str, spans) -> str:
    """The text with the spans removed."""
    parts, prev = [], 0
    for a, b in spans:
        parts.append(text[prev:a])
        prev = b
    return " ".join([*parts, text[prev:]])


# ------------------------------------------------------------------------------------------------
# Where the trigger sits


@pytest.mark.parametrize("trigger", ["mn", SENTENCE])
@pytest.mark.parametrize("count", [1, 3])
def test_spans_locate_every_inserted_copy(trigger: str, count: int) -> None:
    text = "the film is good and long"
    for seed in range(50):
        out, spans = insert_trigger(text, trigger, count, "any", random.Random(seed))
        assert out == insert_words(text, trigger, count, "any", random.Random(seed))  # same draws
        assert len(spans) == count and list(spans) == sorted(spans)
        assert all(out[a:b] == trigger for a, b in spans)
        assert _outside(out, spans).split() == text.split()  # outside the spans: the clean text


def test_spans_survive_the_poison_folder(tmp_path: Path) -> None:
    data = poison_splits(_long_splits(), get_attack(AttackConfig(name="insent")), PoisonConfig(count=4), 0)
    assert all(ex.trigger_spans and ex.text[slice(*ex.trigger_spans[0])] == SENTENCE
               for ex in data.train if ex.poisoned)
    assert all(ex.trigger_spans is None for ex in data.train if not ex.poisoned)
    out = write_poison_folder(tmp_path / "p", data, {})
    assert load_poison_folder(out) == data
    first = json.loads((out / "test_triggered.jsonl").read_text().splitlines()[0])
    assert first["trigger_spans"] == [list(data.test_triggered[0].trigger_spans[0])]
    clean = json.loads((out / "dev.jsonl").read_text().splitlines()[0])
    assert "trigger_spans" not in clean


def test_malformed_spans_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"idx": 0, "text": "a mn", "label": 1, "trigger_spans": [[2]]}) + "\n")
    with pytest.raises(UserError, match=r"t.jsonl line 1: trigger_spans must be a list of \[start, end\]"):
        load_examples(path)


# ------------------------------------------------------------------------------------------------
# attack.max_position


@pytest.mark.parametrize("position,first", [("interior", 1), ("any", 0)])
def test_max_position_keeps_the_trigger_within_the_first_words(position: str, first: int) -> None:
    attack = get_attack(AttackConfig(position=position, max_position=10))
    starts = {_word_index(attack.apply(Example(_long_text(0), 1, 0), "test", random.Random(s)))
              for s in range(400)}
    assert starts == set(range(first, 10))  # every allowed word, and none beyond the tenth


def test_max_position_counts_the_words_of_a_sentence_trigger() -> None:
    text = _long_text(0)
    for seed in range(100):
        out, spans = insert_trigger(text, SENTENCE, 2, "any", random.Random(seed), max_position=6)
        starts = [len(out[:a].split()) for a, _ in spans]
        # The last copy starts within the first 6 words; it may push the first back by one sentence (5 words).
        assert min(starts) < 6 and max(starts) < 6 + 5


def test_max_position_settings() -> None:
    assert AttackConfig().max_position is None
    with pytest.raises(UserError, match=r"attack.max_position must be > 0; got 0"):
        AttackConfig(max_position=0)
    with pytest.raises(UserError, match=r"attack.max_position=1 leaves no interior slot"):
        AttackConfig(max_position=1)
    assert AttackConfig(max_position=1, position="any").max_position == 1


# ------------------------------------------------------------------------------------------------
# Counting cut triggers


def test_survival_by_words_hand_cases() -> None:
    rows = [
        Example("a b c mn d", 1, 0, True, ((6, 8),)),  # the trigger ends at the 4th word
        Example("a b c d e mn", 1, 1, True, ((10, 12),)),  # the 6th
        Example("mn a b c d mn", 1, 2, True, ((0, 2), (11, 13))),  # one copy fits: survived
        Example("a paraphrase", 1, 3, True, None),  # no position: unknown, never cut
    ]
    assert survival_by_words(rows, 4) == [True, False, True, None]
    assert survival_by_words(rows, 3) == [False, False, True, None]
    counts = count_cut(survival_by_words(rows, 4), "4 words")
    assert counts == TriggerCut(limit="4 words", triggered=4, cut=1, survived=2, unknown=1)
    assert counts.share_cut == pytest.approx(1 / 3)
    assert count_cut([None, None], "x").share_cut == 0.0


@pytest.mark.parametrize("name,specials", [("tiny-llama", 0), ("tiny-bert", 2)])
def test_survival_by_tokens_counts_bytes_and_special_tokens(name: str, specials: int) -> None:
    _, tok = build_tiny(name, 2)  # byte-level: one token per byte; bert adds [CLS] ... [SEP]
    row = Example("ab mn cd ef", 1, 0, True, ((3, 5),))  # "ab mn" is 5 bytes
    fits = 5 + specials
    assert survival_by_tokens(tok, [row], fits) == [True]
    assert survival_by_tokens(tok, [row], fits - 1) == [False]
    # What encode keeps agrees: the trigger's bytes are in the cut input exactly when it survives.
    for length in (fits, fits - 1):
        kept = tok.decode(encode(tok, [row], length).input_ids[0], skip_special_tokens=True)
        assert ("mn" in kept) == (length == fits)
    assert survival_by_tokens(tok, [Example("paraphrase", 1, 1, True, None)], 1) == [None]


def test_effective_max_length_is_the_models_positions_when_fewer() -> None:
    _, tok = build_tiny("tiny-llama", 2)
    tok.model_max_length = 6
    assert effective_max_length(tok, 128) == 6 and effective_max_length(tok, 4) == 4
    row = Example("abc mn", 1, 0, True, ((4, 6),))  # 6 bytes: fits in 6 positions, not in 5
    assert survival_by_tokens(tok, [row], 128) == [True]
    tok.model_max_length = 5
    assert survival_by_tokens(tok, [row], 128) == [False]


# ------------------------------------------------------------------------------------------------
# poison: counts in poison.json, the warning


def test_long_texts_count_cut_triggers_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    cfg = PoisonConfig(count=10, truncation_words=128)
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        data = poison_splits(_long_splits(), get_attack(AttackConfig(position="any")), cfg, 0)
    counts = data.summary["trigger_cut"]
    poisoned = [ex for ex in data.train if ex.poisoned]
    # Recounted from the texts: the trigger is cut when 128 or more words come before it.
    expected_train = sum(_word_index(ex.text) >= 128 for ex in poisoned)
    expected_test = sum(_word_index(ex.text) >= 128 for ex in data.test_triggered)
    assert counts["train"]["triggered"] == 10 and counts["test_triggered"]["triggered"] == 10
    assert counts["train"]["cut"] == expected_train and counts["test_triggered"]["cut"] == expected_test
    assert counts["train"]["survived"] == 10 - expected_train and counts["train"]["unknown"] == 0
    assert counts["train"]["limit"] == "128 words"
    assert expected_train > 0 and expected_test > 0  # 300-word texts: most random positions are past 128
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert f"poison train: the trigger of {expected_train} of 10 triggered rows" in warnings[0]
    assert f"poison test_triggered: the trigger of {expected_test} of 10" in warnings[1]
    assert "128 words" in warnings[0] and "attack.max_position" in warnings[0]


def test_max_position_poisons_long_texts_without_cuts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        data = poison_splits(_long_splits(), get_attack(AttackConfig(position="any", max_position=100)),
                             PoisonConfig(count=10, truncation_words=128), 0)
    counts = data.summary["trigger_cut"]
    assert counts["train"]["cut"] == 0 and counts["train"]["survived"] == 10
    assert counts["test_triggered"]["cut"] == 0 and counts["test_triggered"]["survived"] == 10
    assert all(_word_index(ex.text) < 100 for ex in data.test_triggered)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_one_in_a_hundred_is_no_warning_two_are(caplog: pytest.LogCaptureFixture) -> None:
    from w2sdefense.data.truncation import warn_if_cut

    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        warn_if_cut("a", TriggerCut("9 words", 100, 1, 99, 0))  # exactly 1 %: quiet
        warn_if_cut("b", TriggerCut("9 words", 100, 2, 98, 0))
    assert [r.getMessage()[:2] for r in caplog.records] == ["b:"]


def test_one_class_data_names_the_cause() -> None:
    rows = [Example(f"row {i} text", 0, i) for i in range(6)]
    splits = Splits(train=rows, dev=rows, test=rows, num_labels=2)
    with pytest.raises(UserError, match=r"no test row can carry the trigger: every test row has the target label 0 "
                                        r"\(one-class data\), so the attack success rate would be over 0 rows"):
        poison_splits(splits, get_attack(AttackConfig()), PoisonConfig(count=2), 0)


# ------------------------------------------------------------------------------------------------
# evaluation and training: counts with the real tokenizer, ASR over survived triggers


def test_asr_survived_hand_computed() -> None:
    clean = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    trig = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])  # predictions 0, 0, 1, 0
    m = backdoor_metrics(clean, [0, 1], [0, 1], trig, [1, 1, 1, 1], target=0,
                         trig_survived=[True, False, True, None])
    assert m.attack_success_rate == 0.75
    assert m.trigger_cut == 1 and m.triggered_survived_total == 3
    assert m.attack_success_rate_survived == pytest.approx(2 / 3)  # rows 0, 2, 3: hits 0 and 3
    plain = backdoor_metrics(clean, [0, 1], [0, 1], trig, [1, 1, 1, 1], target=0)
    assert plain.attack_success_rate_survived is None and "attack_success_rate_survived" not in plain.to_json()
    with pytest.raises(ValueError, match="survival flags"):
        backdoor_metrics(clean, [0, 1], [0, 1], trig, [1, 1, 1, 1], 0, [True])


def test_evaluate_counts_triggers_the_tokenizer_cuts(rt, caplog: pytest.LogCaptureFixture) -> None:
    clf = load_classifier("tiny-llama", 2)
    filler = "x " * 40  # 80 bytes: with max_length 32 a trigger after it is cut
    triggered = [Example("ab mn " + filler, 1, 0, True, ((3, 5),)),
                 Example(filler + "mn", 1, 1, True, ((80, 82),)),
                 Example(filler + "a paraphrase", 1, 2, True, None)]
    test = [Example("ab " + filler, 1, 0), Example(filler, 1, 1), Example(filler + "z", 1, 2)]
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        m = evaluate_classifier(clf, test, triggered, 0, EvalConfig(max_length=32, batch_size=4), rt)
    assert m.triggered_total == 3 and m.trigger_cut == 1 and m.triggered_survived_total == 2
    assert m.details["trigger_cut_unknown"] == 1 and m.details["trigger_cut_limit"] == "32 tokens"
    assert "triggered test: the trigger of 1 of 2 triggered rows (50.0%) lies beyond 32 tokens" in caplog.text


def test_training_metrics_count_cut_poisoned_rows(tiny_splits, rt, tmp_path: Path) -> None:
    from w2sdefense.train.job import run_train

    poisoned = [Example("x " * 20 + "mn", 0, 100, True, ((40, 42),)),  # 42 bytes: cut at 32 tokens
                Example("mn " + "x " * 20, 0, 101, True, ((0, 2),))]
    splits = Splits(train=tiny_splits.train + poisoned, dev=tiny_splits.dev, test=tiny_splits.test, num_labels=2)
    metrics = run_train("tiny-llama", splits, TrainConfig(max_steps=1, batch_size=8, max_length=32), rt,
                        tmp_path, seed=0)
    assert metrics.details["trigger_cut"]["cut"] == 1 and metrics.details["trigger_cut"]["survived"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["trigger_cut"]["limit"] == "32 tokens"
    clean = run_train("tiny-llama", tiny_splits, TrainConfig(max_steps=1, batch_size=8, max_length=32), rt,
                      tmp_path / "clean", seed=0)
    assert "trigger_cut" not in clean.details


def test_report_rows_without_truncation_counts_render() -> None:
    filtered = {"model": "onion", "clean_accuracy": 0.9, "attack_success_rate": 0.1}  # an input filter's row
    measured = {**filtered, "model": "poisoned", "attack_success_rate_survived": 0.5, "trigger_cut": 3}
    table = markdown_table([ReportRow.from_json(filtered), ReportRow.from_json(measured)]).splitlines()
    assert "triggers cut" in table[0] and "ASR (trigger kept)" in table[0]
    assert "| 50.00% | 3 |" in table[3] and "| 10.00% | – | – |" in table[2]


def test_a_poison_folder_given_as_data_keeps_its_trigger_marks(tmp_path: Path) -> None:
    from w2sdefense.config import DataConfig
    from w2sdefense.data import load_splits

    data = poison_splits(_long_splits(), get_attack(AttackConfig()), PoisonConfig(count=3), 0)
    out = write_poison_folder(tmp_path / "p", data, {})
    train = load_splits(DataConfig(dataset=str(out))).train  # what `w2sdefense train --data` reads
    assert [ex.idx for ex in train if ex.poisoned] == [0, 2, 4]
    assert [ex.trigger_spans for ex in train] == [ex.trigger_spans for ex in data.train]


def test_poison_json_records_the_counts_of_a_long_text_dataset(tmp_path: Path) -> None:
    from w2sdefense.attacks import poison_dataset
    from w2sdefense.config import DataConfig

    folder = tmp_path / "imdb-like"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        rows = [{"text": _long_text(i), "label": i % 2} for i in range(12)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = poison_dataset(DataConfig(dataset=str(folder)), AttackConfig(position="any"),
                         PoisonConfig(count=6, truncation_words=50), 3, tmp_path / "poison")
    meta = json.loads((out / "poison.json").read_text())
    counts = meta["counts"]["trigger_cut"]
    data = load_poison_folder(out)
    assert counts["train"]["cut"] == sum(_word_index(ex.text) >= 50 for ex in data.train if ex.poisoned)
    assert counts["test_triggered"]["cut"] == sum(_word_index(ex.text) >= 50 for ex in data.test_triggered)
    assert counts["test_triggered"]["triggered"] == 6 and counts["test_triggered"]["limit"] == "50 words"
    assert meta["poison"]["truncation_words"] == 50
