"""A reader-free signal on each tested candidate: does it make the suspect's representation input-independent?

A backdoor is a shortcut: whatever a row says, the trigger sends it to the target, so the feature the head reads
(the pooled last hidden state) carries little of the row, and the triggered rows crowd together (activation
clustering, Chen et al. 2018, finds poisoned rows a cluster of their own in the target class). A natural word of the
task adds its push and leaves the row's content in the feature, and the rows it sends to the label spread like the
label's own clean rows. `collapse` measures that: of the clean test rows of other labels the suspect gets right, the
copies the candidate sends to the label, their mean pairwise cosine (features centred on the clean test rows' mean)
minus the same among the clean test rows of the label that the suspect answers with it. Near 0 or below: the sent
rows are as varied as the label's own; well above 0: they collapse. It needs no base and no reader; a candidate that
sends fewer than scan.collapse_rows rows (or a label with fewer such clean rows) has none.

Premise (benchmarks/studies/scan, "Collapse probe"; the zoo's tuning half only): the planted `bb` 0.19 and the InSent
sentence 0.57, the inversion's nonsense candidates on the InSent model whose trigger no detector reached 0.24-0.31
(its pathway half-fired), every candidate of the six clean models 0.04 or less.
"""

from __future__ import annotations

import torch


def mean_pairwise_cosine(x: torch.Tensor) -> float | None:
    """The mean cosine over the distinct pairs of rows of `x` [N, H]; None under two rows."""
    n = x.shape[0]
    if n < 2:
        return None
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    total = unit.sum(0)
    # sum over ordered pairs i != j of <u_i, u_j> = |sum u|^2 - sum |u_i|^2 (memory O(N H), not O(N^2))
    return float((total.dot(total) - (unit * unit).sum()) / (n * (n - 1)))


def collapse(sent: torch.Tensor, own: torch.Tensor, centre: torch.Tensor, min_rows: int) -> float | None:
    """The mean pairwise cosine of the rows a candidate `sent` to a label ([N, H] features) minus that of the label's
    own clean rows (`own`), both centred on `centre`; None where either has fewer than `min_rows` rows."""
    if sent.shape[0] < max(2, min_rows) or own.shape[0] < max(2, min_rows):
        return None
    return mean_pairwise_cosine(sent - centre) - mean_pairwise_cosine(own - centre)
