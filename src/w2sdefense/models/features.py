"""The student's pooled last-layer feature: the hidden state its classification head reads."""

from __future__ import annotations

import torch


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
