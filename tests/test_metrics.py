"""Clean accuracy and attack success rate on hand-computed cases."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from w2sdefense.eval.filtering import filtered_metrics
from w2sdefense.eval.metrics import accuracy, attack_success_rate, backdoor_metrics, clean_correct_asr


def _one_hot_logits(preds: list[int], num_classes: int = 2) -> torch.Tensor:
    """Logits whose argmax is `preds`, with distinct non-trivial values."""
    logits = torch.zeros(len(preds), num_classes)
    for row, p in enumerate(preds):
        logits[row, p] = 1.0 + row
    return logits


# ------------------------------------------------------------------------------------------------
# accuracy / attack_success_rate


def test_accuracy_hand_cases() -> None:
    assert accuracy([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(3 / 5)
    assert accuracy([2, 2], [2, 2]) == 1.0
    assert accuracy([0], [1]) == 0.0
    assert accuracy([], []) == 0.0


def test_accuracy_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError):
        accuracy([], [0])


def test_attack_success_rate_hand_cases() -> None:
    assert attack_success_rate([0, 0, 1, 0], target=0) == pytest.approx(0.75)
    assert attack_success_rate([0, 0, 1, 0], target=1) == pytest.approx(0.25)
    assert attack_success_rate([3, 2, 2], target=2) == pytest.approx(2 / 3)
    assert attack_success_rate([], target=0) == 0.0


# ------------------------------------------------------------------------------------------------
# backdoor_metrics


def test_backdoor_metrics_binary_hand_case() -> None:
    # Clean rows idx 10..14; predictions 1,0,1,1,0 against labels 1,1,1,0,0: correct = 10, 12, 14.
    clean_logits = _one_hot_logits([1, 0, 1, 1, 0])
    clean_labels = [1, 1, 1, 0, 0]
    clean_idx = [10, 11, 12, 13, 14]
    # Triggered versions of rows 10, 11, 12, 13 (label-1 rows and one label-0 row), target 0.
    trig_logits = torch.tensor([[2.0, 0.0], [1.0, -1.0], [0.0, 3.0], [0.5, 0.0]])
    trig_idx = [10, 11, 12, 13]
    m = backdoor_metrics(clean_logits, clean_labels, clean_idx, trig_logits, trig_idx, target=0)

    assert m.clean_accuracy == pytest.approx(3 / 5)
    assert (m.clean_correct, m.clean_total) == (3, 5)
    assert m.attack_success_rate == pytest.approx(0.75)  # rows 10, 11, 13 hit the target
    assert (m.attack_hits, m.triggered_total) == (3, 4)
    # Triggered rows whose clean version is correct: 10 (hit) and 12 (miss) -> 1/2.
    assert m.triggered_clean_correct_total == 2
    assert m.attack_success_rate_clean_correct == pytest.approx(0.5)
    # softmax([a, b])[0] = 1 / (1 + exp(b - a)), by hand for each row.
    probs = [1 / (1 + math.exp(0.0 - 2.0)), 1 / (1 + math.exp(-1.0 - 1.0)), 1 / (1 + math.exp(3.0)),
             1 / (1 + math.exp(-0.5))]
    assert m.mean_target_probability_triggered == pytest.approx(sum(probs) / 4, abs=1e-6)
    assert m.target_label == 0


def test_clean_correct_subset_uses_index_not_position() -> None:
    # Clean rows listed out of order; triggered rows point to them by idx, in yet another order.
    clean_logits = _one_hot_logits([0, 1, 1])
    clean_labels = [0, 0, 1]  # idx 7 correct, idx 3 wrong, idx 5 correct
    clean_idx = [7, 3, 5]
    trig_logits = _one_hot_logits([1, 1, 1])  # all hit target 1
    trig_idx = [5, 3, 9]  # 9 has no clean row: excluded from the subset
    m = backdoor_metrics(clean_logits, clean_labels, clean_idx, trig_logits, trig_idx, target=1)
    assert m.attack_success_rate == 1.0
    assert m.triggered_clean_correct_total == 1
    assert m.attack_success_rate_clean_correct == 1.0

    trig_logits = _one_hot_logits([0, 1, 1])  # idx 5 (the only kept row) now misses
    m = backdoor_metrics(clean_logits, clean_labels, clean_idx, trig_logits, trig_idx, target=1)
    assert m.attack_success_rate == pytest.approx(2 / 3)
    assert m.attack_success_rate_clean_correct == 0.0


def test_backdoor_metrics_multiclass() -> None:
    # 4 classes, target 2.
    clean_logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.0],  # 1, label 1: correct
        [0.0, 0.0, 0.0, 5.0],  # 3, label 3: correct
        [1.0, 0.0, 2.0, 0.0],  # 2, label 0: wrong
        [3.0, 1.0, 0.0, 0.0],  # 0, label 0: correct
    ])
    clean_labels = [1, 3, 0, 0]
    clean_idx = [0, 1, 2, 3]
    trig_logits = torch.tensor([
        [0.0, 0.0, 1.0, 0.0],  # idx 0 -> 2 hit
        [0.0, 0.0, 0.0, 1.0],  # idx 1 -> 3 miss
        [0.0, 0.0, 4.0, 0.0],  # idx 2 -> 2 hit (clean version wrong)
        [0.0, 2.0, 1.0, 0.0],  # idx 3 -> 1 miss
        [0.0, 0.0, 0.0, 0.0],  # idx 0 again, a second trigger: argmax ties -> 0, miss
    ])
    trig_idx = [0, 1, 2, 3, 0]
    m = backdoor_metrics(clean_logits, clean_labels, clean_idx, trig_logits, trig_idx, target=2)
    assert m.clean_accuracy == pytest.approx(3 / 4)
    assert m.attack_success_rate == pytest.approx(2 / 5)
    assert m.triggered_clean_correct_total == 4  # rows for idx 0, 1, 3, 0
    assert m.attack_success_rate_clean_correct == pytest.approx(1 / 4)

    def p_target(row: list[float]) -> float:
        exps = [math.exp(v) for v in row]
        return exps[2] / sum(exps)

    expected = sum(p_target(r) for r in trig_logits.tolist()) / 5
    assert m.mean_target_probability_triggered == pytest.approx(expected, abs=1e-6)
    assert p_target([0, 0, 0, 0]) == pytest.approx(0.25)  # sanity on the hand softmax


def test_empty_triggered_set() -> None:
    clean_logits = _one_hot_logits([1, 0])
    m = backdoor_metrics(clean_logits, [1, 1], [0, 1], torch.zeros(0, 2), [], target=0)
    assert m.clean_accuracy == pytest.approx(0.5)
    assert m.attack_success_rate == 0.0
    assert m.attack_hits == 0 and m.triggered_total == 0
    assert m.attack_success_rate_clean_correct is None and m.triggered_clean_correct_total == 0
    assert m.to_json()["attack_success_rate_clean_correct"] is None  # n/a: kept as null, not left out
    assert m.mean_target_probability_triggered == 0.0


def test_empty_clean_set() -> None:
    m = backdoor_metrics(torch.zeros(0, 2), [], [], _one_hot_logits([0, 0, 1]), [0, 1, 2], target=0)
    assert m.clean_accuracy == 0.0 and m.clean_total == 0
    assert m.attack_success_rate == pytest.approx(2 / 3)
    assert m.triggered_clean_correct_total == 0  # no clean row is known to be correct


def test_asr_cc_over_no_clean_correct_row_is_no_number_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    # Both clean rows (label 1) are classified 0, the target: no triggered row has a clean version that is right.
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        m = backdoor_metrics(_one_hot_logits([0, 0]), [1, 1], [0, 1], _one_hot_logits([0, 0]), [0, 1], target=0)
    assert m.attack_success_rate == 1.0 and m.clean_accuracy == 0.0
    assert m.attack_success_rate_clean_correct is None and m.triggered_clean_correct_total == 0
    assert m.to_json()["attack_success_rate_clean_correct"] is None  # n/a: kept as null, not left out
    assert "ASR-cc is not defined" in caplog.text and "n/a" in caplog.text
    caplog.clear()
    # Behind a filter: both clean rows rejected, so none is served right.
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        m = filtered_metrics(clean_preds=[1, 1], clean_labels=[1, 1], clean_idx=[0, 1], clean_rejected=[True, True],
                             trig_preds=[0, 0], trig_idx=[0, 1], trig_rejected=[False, False], target=0)
    assert m["attack_success_rate"] == 1.0
    assert m["attack_success_rate_clean_correct"] is None and m["triggered_clean_correct_total"] == 0
    assert "ASR-cc is not defined" in caplog.text


def test_a_per_label_asr_cc_over_no_row_names_its_trigger_and_label(caplog: pytest.LogCaptureFixture) -> None:
    from w2sdefense.eval.triggers import measure_toward

    # Both clean rows are classified 1: toward label 1 no row of another label is right (n/a), toward 0 one is.
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        m = measure_toward("cf", _one_hot_logits([1, 1]), [0, 1], [0, 1], _one_hot_logits([0, 0]), [0, 1])
    assert m.by_label["1"].asr_cc is None and m.by_label["0"].asr_cc == 1.0
    assert len(caplog.records) == 1
    assert caplog.text.count("ASR-cc of trigger 'cf' toward label 1 is not defined") == 1, caplog.text


def test_asr_cc_over_clean_correct_rows_is_a_number_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="w2sdefense"):
        assert clean_correct_asr([False]) == 0.0
        assert clean_correct_asr([True, False, True, True]) == 0.75
    assert not caplog.records


def test_clean_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        backdoor_metrics(_one_hot_logits([0, 1, 1]), [0, 1], [0, 1], torch.zeros(0, 2), [], target=0)


def test_triggered_length_mismatch_raises() -> None:
    clean_logits = _one_hot_logits([0, 1])
    with pytest.raises(ValueError):
        backdoor_metrics(clean_logits, [0, 1], [0, 1], _one_hot_logits([1, 1, 1]), [0, 1], target=1)


# ------------------------------------------------------------------------------------------------
# One definition: a repaired model's metrics and a filtered system's agree where no row is rejected


def test_filtered_and_unfiltered_rates_agree_without_rejections() -> None:
    # Clean rows idx 0-5 (labels 1 0 1 1 0 1; predictions right for 0 1 2 4); triggered versions of 0 2 3 5
    # (target 0; hits on 0, 3, 5). By hand: CA 4/6; ASR 3/4; ASR-cc over the triggered rows whose clean
    # version is right (idx 0, 2): hits on 0 only, 1/2.
    labels, clean_preds, idx = [1, 0, 1, 1, 0, 1], [1, 0, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5]
    trig_preds, trig_idx = [0, 1, 0, 0], [0, 2, 3, 5]
    plain = backdoor_metrics(_one_hot_logits(clean_preds), labels, idx, _one_hot_logits(trig_preds), trig_idx, 0)
    filtered = filtered_metrics(clean_preds, labels, idx, [False] * 6, trig_preds, trig_idx, [False] * 4, 0)
    hand = {"clean_accuracy": 4 / 6, "clean_correct": 4, "clean_total": 6, "attack_success_rate": 3 / 4,
            "attack_hits": 3, "triggered_total": 4, "attack_success_rate_clean_correct": 1 / 2,
            "triggered_clean_correct_total": 2}
    assert {k: getattr(plain, k) for k in hand} == {k: filtered[k] for k in hand} == hand
    # A rejection changes only the filtered side: a rejected clean row is wrong, a rejected triggered row no hit.
    rejected = filtered_metrics(clean_preds, labels, idx, [True] + [False] * 5, trig_preds, trig_idx,
                                [False, False, True, False], 0)
    assert (rejected["clean_accuracy"], rejected["attack_success_rate"]) == (3 / 6, 2 / 4)
    assert (rejected["attack_success_rate_clean_correct"], rejected["triggered_clean_correct_total"]) == (0.0, 1)
