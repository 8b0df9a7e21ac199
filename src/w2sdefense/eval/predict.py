"""Batched inference under torch.inference_mode: length-sorted batches, results in input order."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from w2sdefense.runtime import Runtime
from w2sdefense.train.batching import Encoded, make_loader, model_inputs, sorted_batches


def predict_logits(model, encoded: Encoded, pad_id: int, batch_size: int, rt: Runtime,
                   desc: str = "predict", prepared: bool = False) -> torch.Tensor:
    """Logits [N, K] (float32, CPU) for every example of `encoded`, in its order."""
    if len(encoded) == 0:
        return torch.empty((0, 0))
    loader = make_loader(encoded, sorted_batches(encoded.lengths, batch_size), pad_id)
    loader = rt.accelerator.prepare_data_loader(loader)
    if not prepared:
        model = model.to(rt.device)
    was_training = model.training
    model.eval()
    positions, logits = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not rt.is_main):
            out = model(**model_inputs(batch)).logits.float()
            pos, out = rt.accelerator.gather_for_metrics((batch["position"], out))
            positions.append(pos.cpu())
            logits.append(out.cpu())
    model.train(was_training)
    positions_t, logits_t = torch.cat(positions), torch.cat(logits)
    result = torch.empty_like(logits_t)
    result[positions_t] = logits_t
    return result
