"""W2SDefense losses against hand-written reference computations; feature pooling by position."""

from __future__ import annotations

import math

import pytest
import torch

from w2sdefense.defenses.losses import (
    feature_alignment_per_sample,
    feature_alignment_reference,
    kd_loss,
    w2s_total,
)
from w2sdefense.models.features import last_token_index, pool


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _kd_reference(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T^2 * mean_b sum_k p_t,k (log p_t,k - log p_s,k), p = softmax(logits / T), in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_s = _softmax([v / t for v in s_row])
        p_t = _softmax([v / t for v in t_row])
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return t * t * total / len(student)


# ------------------------------------------------------------------------------------------------
# kd_loss


def test_kd_zero_for_equal_logits() -> None:
    logits = torch.randn(4, 3, generator=_gen(0))
    assert kd_loss(logits, logits.clone(), 2.0).abs().item() < 1e-6
    # Softmax is shift-invariant: adding a constant per row changes nothing.
    assert kd_loss(logits + 5.0, logits, 1.0).abs().item() < 1e-5


def test_kd_positive_for_different_logits() -> None:
    student = torch.randn(4, 3, generator=_gen(1))
    teacher = torch.randn(4, 3, generator=_gen(2))
    assert kd_loss(student, teacher, 1.0).item() > 1e-3
    assert kd_loss(student, teacher, 2.0).item() > 1e-3


def test_kd_matches_hand_formula_at_t2() -> None:
    student = torch.randn(4, 3, generator=_gen(3)) * 2
    teacher = torch.randn(4, 3, generator=_gen(4)) * 2
    expected = _kd_reference(student, teacher, 2.0)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_hand_computed_single_row() -> None:
    # student [0, 0] -> p_s = (1/2, 1/2); teacher [ln 3, 0] at T=1 -> p_t = (3/4, 1/4).
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_depends_on_temperature() -> None:
    student = torch.randn(4, 3, generator=_gen(5)) * 3
    teacher = torch.randn(4, 3, generator=_gen(6)) * 3
    at_1, at_2 = kd_loss(student, teacher, 1.0).item(), kd_loss(student, teacher, 2.0).item()
    assert at_1 == pytest.approx(_kd_reference(student, teacher, 1.0), rel=1e-5)
    assert at_2 == pytest.approx(_kd_reference(student, teacher, 2.0), rel=1e-5)
    assert abs(at_1 - at_2) > 1e-3


def test_kd_is_a_batch_mean() -> None:
    student = torch.randn(6, 3, generator=_gen(7))
    teacher = torch.randn(6, 3, generator=_gen(8))
    per_row = [kd_loss(student[i:i + 1], teacher[i:i + 1], 2.0).item() for i in range(6)]
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(sum(per_row) / 6, rel=1e-5)


def test_kd_gradient_flows_to_student_only() -> None:
    student = torch.randn(4, 3, generator=_gen(9), requires_grad=True)
    teacher = torch.randn(4, 3, generator=_gen(10), requires_grad=True)
    kd_loss(student, teacher.detach(), 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum().item() > 0
    assert teacher.grad is None
    # d/ds of T^2 * KL / B is T * (p_s - p_t) / B per logit.
    p_s = torch.tensor([_softmax([v / 2 for v in r]) for r in student.tolist()])
    p_t = torch.tensor([_softmax([v / 2 for v in r]) for r in teacher.tolist()])
    assert torch.allclose(student.grad, 2 * (p_s - p_t) / 4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# feature alignment


def test_per_sample_alignment_hand_case() -> None:
    teacher = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    student = torch.tensor([[1.0, 0.0, 5.0], [1.0, -1.0, 2.0]])
    # Row 0: 0 + 4 + 4 = 8; row 1: 1 + 1 + 4 = 6; mean = 7.
    assert feature_alignment_per_sample(teacher, student).item() == pytest.approx(7.0)
    assert feature_alignment_per_sample(teacher, teacher.clone()).item() == 0.0


def test_per_sample_alignment_matches_loops() -> None:
    teacher = torch.randn(3, 5, generator=_gen(11))
    student = torch.randn(3, 5, generator=_gen(12))
    expected = sum(sum((t - s) ** 2 for t, s in zip(tr, sr))
                   for tr, sr in zip(teacher.tolist(), student.tolist())) / 3
    assert feature_alignment_per_sample(teacher, student).item() == pytest.approx(expected, rel=1e-5)
    # Pairs row i with row i: swapping the student rows changes the loss.
    assert feature_alignment_per_sample(teacher, student.flip(0)).item() != pytest.approx(expected, rel=1e-3)


def _reference_loops(teacher: torch.Tensor, hidden: torch.Tensor) -> float:
    """Mean over b, l of ||hidden[b, l] - teacher[-1] + 1e-6||^2 (pairwise_distance's eps)."""
    last = teacher[-1].tolist()
    b_count, l_count, _ = hidden.shape
    total = 0.0
    for b in range(b_count):
        for pos in range(l_count):
            row = hidden[b, pos].tolist()
            total += sum((h - t + 1e-6) ** 2 for h, t in zip(row, last))
    return total / (b_count * l_count)


def test_reference_alignment_matches_loops() -> None:
    teacher = torch.randn(2, 4, generator=_gen(13))
    hidden = torch.randn(2, 3, 4, generator=_gen(14))
    expected = _reference_loops(teacher, hidden)
    assert feature_alignment_reference(teacher, hidden).item() == pytest.approx(expected, rel=1e-5)


def test_reference_alignment_hand_case() -> None:
    teacher = torch.tensor([[9.0, 9.0], [1.0, 1.0]])  # only [1, 1] is used
    hidden = torch.tensor([[[1.0, 1.0], [1.0, 3.0]]])  # distances^2: ~0 and ~4
    expected = ((1e-6) ** 2 * 2 + (1e-6) ** 2 + (2 + 1e-6) ** 2) / 2
    assert feature_alignment_reference(teacher, hidden).item() == pytest.approx(expected, rel=1e-6)


def test_reference_alignment_uses_only_the_last_teacher_row() -> None:
    teacher = torch.randn(3, 4, generator=_gen(15))
    hidden = torch.randn(3, 5, 4, generator=_gen(16))
    base = feature_alignment_reference(teacher, hidden).item()
    changed = teacher.clone()
    changed[0] += 10.0
    changed[1] -= 3.0
    assert feature_alignment_reference(changed, hidden).item() == pytest.approx(base, rel=1e-6)
    changed[-1] += 1.0
    assert feature_alignment_reference(changed, hidden).item() != pytest.approx(base, rel=1e-3)


def test_reference_alignment_counts_padding_positions() -> None:
    teacher = torch.randn(2, 4, generator=_gen(17))
    hidden = torch.randn(2, 3, 4, generator=_gen(18))
    # Suppose row 0's mask is [1, 1, 0]: position 2 is padding, yet it moves the loss.
    base = feature_alignment_reference(teacher, hidden).item()
    padded = hidden.clone()
    padded[0, 2] += 5.0
    moved = feature_alignment_reference(teacher, padded).item()
    assert moved != pytest.approx(base, rel=1e-3)
    assert moved == pytest.approx(_reference_loops(teacher, padded), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# total


def test_w2s_total_weights() -> None:
    ce, kd, fa = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert w2s_total(ce, kd, fa, 5.0, 0.1, 0.01).item() == pytest.approx(5 * 2 + 0.1 * 3 + 0.01 * 5)
    assert w2s_total(ce, kd, fa, 1.0, 0.0, 0.0).item() == pytest.approx(2.0)
    assert w2s_total(ce, kd, fa, 0.0, 0.0, 1.0).item() == pytest.approx(5.0)


def test_w2s_total_gradients_are_the_weights() -> None:
    terms = [torch.tensor(v, requires_grad=True) for v in (1.0, 2.0, 3.0)]
    w2s_total(*terms, alpha=5.0, beta=0.5, gamma=0.25).backward()
    assert [t.grad.item() for t in terms] == [5.0, 0.5, 0.25]


# ------------------------------------------------------------------------------------------------
# pooling


def test_last_token_index_right_left_and_full() -> None:
    mask = torch.tensor([
        [1, 1, 1, 0, 0],  # right padding -> 2
        [0, 0, 1, 1, 1],  # left padding -> 4
        [1, 1, 1, 1, 1],  # full -> 4
        [1, 0, 0, 0, 0],  # one token -> 0
        [0, 0, 0, 0, 1],  # one token, left padded -> 4
    ])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0, 4]
    assert last_token_index(mask.bool()).tolist() == [2, 4, 4, 0, 4]


def test_pool_decoder_picks_last_real_token() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = pool(hidden, mask, decoder=True)
    assert pooled.shape == (2, 3)
    assert torch.equal(pooled[0], hidden[0, 1])
    assert torch.equal(pooled[1], hidden[1, 3])


def test_pool_encoder_picks_first_position() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = pool(hidden, mask, decoder=False)
    assert torch.equal(pooled, hidden[:, 0])


def test_normalized_alignment_is_two_minus_two_cosine() -> None:
    from w2sdefense.defenses.losses import feature_alignment_normalized

    t = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    s = torch.tensor([[0.0, 5.0], [2.0, 2.0]])  # orthogonal (cos 0), then parallel (cos 1)
    assert feature_alignment_normalized(t, s).item() == pytest.approx(((2 - 0) + (2 - 2)) / 2)


def test_normalized_alignment_ignores_scale_unlike_per_sample() -> None:
    from w2sdefense.defenses.losses import feature_alignment_normalized, feature_alignment_per_sample

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    base = feature_alignment_normalized(t, s)
    torch.testing.assert_close(feature_alignment_normalized(7 * t, 40 * s), base)
    assert feature_alignment_per_sample(t, 40 * s) > 100 * feature_alignment_per_sample(t, s) / 2
    cos = torch.nn.functional.cosine_similarity(t, s, dim=-1)
    torch.testing.assert_close(base, (2 - 2 * cos).mean())
