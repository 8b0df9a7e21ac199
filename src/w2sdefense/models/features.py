"""The student's pooled last-layer feature (the hidden state its classification head reads), and logistic heads
fitted on such features (layer-cut's probes, scan's clean reader)."""

from __future__ import annotations

import torch

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # the probe head's L2 weights over standardised features; dev picks one


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token of each row (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, decoder: bool) -> torch.Tensor:
    """[B, L, H] -> [B, H]: last non-pad token for decoders, first token for encoders."""
    if not decoder:
        return hidden[:, 0]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def fit_probe(x: torch.Tensor, y: torch.Tensor, strength: float, num_labels: int) -> torch.nn.Linear:
    """A logistic head on (standardised) features, L2 `strength`, by L-BFGS."""
    head = torch.nn.Linear(x.shape[1], num_labels)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + strength * head.weight.pow(2).sum() / 2
        loss.backward()
        return loss
    opt.step(closure)
    return head


class Probe(torch.nn.Module):
    """A logistic head on raw features: standardised by the fitting rows' statistics, then linear."""

    def __init__(self, head: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.head = head.requires_grad_(False)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head((z - self.mean) / self.std)


def best_probe(train: torch.Tensor, y: torch.Tensor, dev: torch.Tensor, dev_y: torch.Tensor,
               num_labels: int) -> tuple[float, float, Probe]:
    """(dev accuracy, L2 strength, the head on raw features) of the best-on-dev logistic head on one layer's
    features, standardised by the training rows' statistics."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    best = None
    for strength in STRENGTHS:
        head = fit_probe((train - mean) / std, y, strength, num_labels)
        with torch.no_grad():
            accuracy = float((head((dev - mean) / std).argmax(-1) == dev_y).float().mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, strength, head)
    accuracy, strength, head = best
    return accuracy, strength, Probe(head, mean, std)
