"""Batched inference under torch.inference_mode: length-sorted batches, results in input order."""

from __future__ import annotations

import torch

from w2sdefense.progress import progress_bar
from w2sdefense.runtime import Runtime
from w2sdefense.models.batching import Encoded, ShardedBatches, make_loader, model_inputs, sorted_batches


def predict_logits(model, encoded: Encoded, pad_id: int, batch_size: int, rt: Runtime,
                   desc: str = "predict", prepared: bool = False) -> torch.Tensor:
    """Logits [N, K] (float32, CPU) for every example of `encoded`, in its order."""
    if len(encoded) == 0:
        return torch.empty((0, 0))
    acc = rt.accelerator
    batches = ShardedBatches(sorted_batches(encoded.lengths, batch_size), acc.process_index, acc.num_processes)
    loader = make_loader(encoded, batches, pad_id)
    if not prepared:
        model = model.to(rt.device)
    was_training = model.training
    model.eval()
    positions, logits = [], []
    with torch.inference_mode():
        for batch in progress_bar(loader, desc=desc, leave=False, disable=not rt.is_main, unit="batch"):
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            positions.append(batch["position"])
            logits.append(model(**model_inputs(batch)).logits.float())
    model.train(was_training)
    positions_t, logits_t = _gather(torch.cat(positions), torch.cat(logits), acc)
    # Shards may repeat an example (a batch smaller than the process count): place each by its
    # position (repeats hold the same values) and check that none is missing.
    result = torch.full((len(encoded), logits_t.shape[-1]), float("nan"))
    result[positions_t] = logits_t
    if torch.isnan(result).any():
        raise RuntimeError("inference lost examples while gathering across processes")
    return result


def _gather(positions: torch.Tensor, logits: torch.Tensor, acc) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (positions, logits), on every process, on the CPU."""
    if acc.num_processes > 1:
        # Shares differ in size by at most one row a batch: pad, gather, drop the padding.
        positions = acc.pad_across_processes(positions, pad_index=-1)
        logits = acc.pad_across_processes(logits, pad_index=0)
        positions, logits = acc.gather(positions), acc.gather(logits)
        keep = positions >= 0
        positions, logits = positions[keep], logits[keep]
    return positions.cpu(), logits.cpu()
