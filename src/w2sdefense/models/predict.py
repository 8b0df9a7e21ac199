"""Batched inference under torch.inference_mode: length-sorted batches, results in input order.

`run_inference` is the one inference loop (evaluation, the teachers' caches, activation statistics);
`predict_logits` and `classify_rows` are the logits of every row on top of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from w2sdefense.progress import progress_bar
from w2sdefense.data.records import Example
from w2sdefense.errors import UserError
from w2sdefense.runtime import Runtime
from w2sdefense.models.batching import Encoded, ShardedBatches, encode, make_loader, model_inputs, sorted_batches
from w2sdefense.models.features import pool
from w2sdefense.models.loading import Classifier, is_decoder

# Called once per batch with the model inputs (on the device) and the rows' positions in `encoded` (CPU).
Visit = Callable[[dict[str, torch.Tensor], torch.Tensor], None]


def run_inference(model: torch.nn.Module, encoded: Encoded, pad_id: int, batch_size: int, rt: Runtime,
                  visit: Visit, desc: str | None = None, prepared: bool = False, sharded: bool = False) -> None:
    """Call `visit` on every length-sorted batch of `encoded`, the model in eval mode under inference_mode.

    `prepared`: the model is already on its device (accelerate-prepared). `sharded`: each process gets
    its share of the batches (the caller gathers); otherwise every process sees every row. The model's
    train/eval mode is put back afterwards. `desc` names a progress bar (none without it).
    """
    acc = rt.accelerator
    order = sorted_batches(encoded.lengths, batch_size)
    batches = ShardedBatches(order, acc.process_index, acc.num_processes) if sharded else order
    if not prepared:
        model = model.to(rt.device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in progress_bar(make_loader(encoded, batches, pad_id), desc=desc, leave=False,
                                      disable=desc is None or not rt.is_main, unit="batch"):
                visit({k: v.to(rt.device) for k, v in model_inputs(batch).items()}, batch["position"])
    finally:
        model.train(was_training)


def predict_logits(model, encoded: Encoded, pad_id: int, batch_size: int, rt: Runtime,
                   desc: str = "predict", prepared: bool = False, decoder: bool | None = None) -> torch.Tensor:
    """Logits [N, K] (float32, CPU) for every example of `encoded`, in its order (batches shared by processes).
    With `decoder` given (True: a decoder-only model), each row's pooled last-layer feature (the hidden state the
    head reads: the last real token's for a decoder, the first token's for an encoder) follows its logits: [N, K + H]."""
    if len(encoded) == 0:
        return torch.empty((0, 0))
    positions, logits = [], []

    def visit(inputs: dict, pos: torch.Tensor) -> None:
        positions.append(pos)
        if decoder is None:
            logits.append(model(**inputs).logits.float())
            return
        out = model(**inputs, output_hidden_states=True)
        feature = pool(out.hidden_states[-1].float(), inputs["attention_mask"], decoder)
        logits.append(torch.cat([out.logits.float(), feature], dim=-1))

    run_inference(model, encoded, pad_id, batch_size, rt, visit, desc, prepared, sharded=True)
    all_logits = torch.cat(logits)
    positions_t, logits_t = _gather(torch.cat(positions).to(all_logits.device), all_logits, rt.accelerator)
    # Shards may repeat an example (a batch smaller than the process count): place each by its
    # position (repeats hold the same values) and check that none is missing.
    result = torch.zeros((len(encoded), logits_t.shape[-1]))
    seen = torch.zeros(len(encoded), dtype=torch.bool)
    result[positions_t], seen[positions_t] = logits_t, True
    if not bool(seen.all()):
        raise RuntimeError("inference lost examples while gathering across processes")
    broken = ~torch.isfinite(result).all(dim=-1)
    if bool(broken.any()):
        raise UserError(f"the model's outputs are not finite (NaN or infinity) on {int(broken.sum())} of "
                        f"{len(encoded)} rows: its weights diverged (a learning rate or loss weight too large?); "
                        "see the loss history in the stage's metrics.json")
    return result


def classify_rows(clf: Classifier, rows: Sequence[Example], max_length: int, batch_size: int, rt: Runtime,
                  desc: str = "predict") -> torch.Tensor:
    """A classifier's logits [N, K] (CPU) for `rows`, each cut to `max_length` tokens."""
    return predict_logits(clf.model, encode(clf.tokenizer, rows, max_length), clf.tokenizer.pad_token_id,
                          batch_size, rt, desc)


def classify_rows_pooled(clf: Classifier, rows: Sequence[Example], max_length: int, batch_size: int, rt: Runtime,
                         desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's logits [N, K] and pooled last-layer features [N, H] (CPU) for `rows`, one pass."""
    both = predict_logits(clf.model, encode(clf.tokenizer, rows, max_length), clf.tokenizer.pad_token_id,
                          batch_size, rt, desc, decoder=is_decoder(clf.config))
    labels = clf.config.num_labels
    return both[:, :labels], both[:, labels:]


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
