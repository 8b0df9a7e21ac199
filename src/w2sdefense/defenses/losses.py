"""W2SDefense's loss terms as pure functions: KD, the two feature-alignment modes, the total."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


def feature_alignment_per_sample(teacher_feature: torch.Tensor, student_pooled: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||teacher_i - student_i||^2, each student row its pooled feature."""
    diff = teacher_feature.float() - student_pooled.float()
    return diff.pow(2).sum(dim=-1).mean()


def feature_alignment_normalized(teacher_feature: torch.Tensor, student_pooled: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||t_i/|t_i| - s_i/|s_i|||^2 = 2 - 2 cos(t_i, s_i), in [0, 4].

    Scale-free: the raw per-sample term is dominated by the student's hidden-state norm (about 47 for
    SmolLM2 against a teacher feature of norm about 7), so its weight means something different for
    every student; this one compares directions only, and one gamma means the same for any width.
    """
    t = F.normalize(teacher_feature.float(), dim=-1)
    s = F.normalize(student_pooled.float(), dim=-1)
    return (t - s).pow(2).sum(dim=-1).mean()


def feature_alignment_reference(teacher_feature: torch.Tensor, student_hidden: torch.Tensor) -> torch.Tensor:
    """What the authors' code computes, kept for reproduction.

    The LAST example's teacher feature [D] against the student's last-layer hidden state at EVERY
    position [B, L, D] of every example, padding included: F.pairwise_distance broadcasts the
    [D] vector over [B, L, D]; the distances are squared and averaged.
    """
    distances = F.pairwise_distance(student_hidden.float(), teacher_feature[-1].float())
    return distances.pow(2).mean()


def w2s_total(ce: torch.Tensor, kd: torch.Tensor, fa: torch.Tensor, alpha: float, beta: float,
              gamma: float) -> torch.Tensor:
    """alpha * CE + beta * KD + gamma * FA (KD already carries its T^2)."""
    return alpha * ce + beta * kd + gamma * fa


def feature_alignment_relational(teacher_feature: torch.Tensor, student_pooled: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving alignment (Tung & Mori, 2019): the batch's cosine-similarity matrix of the
    student's states against the teacher's, mean squared difference over the B x B entries, in [0, 4].

    Scale-free and width-free: no projection is needed, so it can be asked of any layer of the student,
    and shrinking the student's norm cannot satisfy it. Under several processes each compares its own
    share of the batch (a smaller matrix), so its value depends on the process count.
    """
    t = F.normalize(teacher_feature.float(), dim=-1)
    s = F.normalize(student_pooled.float(), dim=-1)
    return (s @ s.T - t @ t.T).pow(2).mean()


def layer_consistency(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
    """CROW's internal-consistency term (Min et al., 2025): mean over adjacent pairs of hidden states
    (embeddings included) and over real tokens of 1 - cos(h_l, h_{l+1})."""
    mask = attention_mask.float()
    pairs = [1 - F.cosine_similarity(a.float(), b.float(), dim=-1) for a, b in zip(hidden_states, hidden_states[1:])]
    per_token = torch.stack(pairs).mean(dim=0)  # [B, L]
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """Cross-entropy over the rows that have a label (`ignore` marks those without); 0 when none has."""
    has = labels != ignore
    if not bool(has.any()):
        return logits.new_zeros(())
    return F.cross_entropy(logits[has].float(), labels[has])


def distill_total(ce: torch.Tensor, kd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha * CE (labelled rows) + beta * KD (every row; kd_loss holds the T^2)."""
    return alpha * ce + beta * kd
