"""Trigger inversion over the vocabulary (in the spirit of DBS, Shen et al. ICML 2022): for each label and trigger
length, a learnable distribution over the word tokens fills `length` slots at the start of clean rows of the other
labels, and is pushed, with a falling softmax temperature, toward the tokens that send those rows to the label. The
tokens it settles on are the candidates: a backdoor's trigger is a short cut that a natural word rarely matches.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from w2sdefense.data.records import Example
from w2sdefense.progress import progress_bar
from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs, word_ids


@DETECTORS.register("inversion")
class Inversion(Detector):
    """Word- and phrase-level trigger inversion (scan.lengths tokens) toward each label."""

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        clf, cfg = inputs.clf, inputs.cfg
        ids = word_ids(clf.tokenizer)
        generator = torch.Generator().manual_seed(inputs.seed)
        found = []
        for target in range(inputs.num_labels):
            rows = [r for r in inputs.rows if r.label != target][: cfg.rows]
            for length in cfg.lengths if rows else []:
                logits = invert(clf, rows, target, length, ids, inputs, generator)
                found += [Proposal(t, target, "inversion") for t in read_out(logits, ids, clf.tokenizer, cfg.candidates)]
        return found


def invert(clf, rows: list[Example], target: int, length: int, ids: torch.Tensor, inputs: ScanInputs,
           generator: torch.Generator) -> torch.Tensor:
    """The learned vocabulary logits [length, len(ids)] of a `length`-token trigger toward `target`."""
    model, cfg, device = clf.model, inputs.cfg, inputs.rt.device
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()
    with torch.no_grad():  # through the module, so a model that scales its embeddings (Gemma) scales these too
        table = embed(ids.to(device)).float()
    batch = with_slots(clf.tokenizer, rows, length, inputs.max_length, slot_id=int(ids[0]))
    batch = {k: v.to(device) for k, v in batch.items()}
    slots = batch.pop("slots")
    logits = (0.01 * torch.randn(length, len(ids), generator=generator)).to(device).requires_grad_()
    optimiser = torch.optim.Adam([logits], lr=cfg.lr)
    labels = torch.full((len(rows),), target, device=device)
    start, end = cfg.temperature
    bar = progress_bar(range(cfg.steps), desc=f"invert: label {target}, {length} token(s)", leave=False,
                       disable=not inputs.rt.is_main, unit="step")
    for step in bar:
        temperature = start * (end / start) ** (step / max(1, cfg.steps - 1))  # geometric: explore, then commit
        soft = torch.softmax(logits / temperature, dim=-1) @ table  # [length, hidden]
        with _slots_filled(embed, slots, soft):
            out = model(**batch).logits.float()
        loss = F.cross_entropy(out, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return logits.detach().cpu()


def with_slots(tokenizer, rows: list[Example], length: int, max_length: int, slot_id: int) -> dict[str, torch.Tensor]:
    """The rows' token ids with `length` slot tokens after their leading special tokens (right-padded), and
    `slots`, the mask of those positions (each row's slots in order)."""
    encoded = tokenizer([r.text for r in rows], truncation=True, max_length=max(2, max_length - length))["input_ids"]
    special = set(tokenizer.all_special_ids)
    seqs = []
    for ids in encoded:
        lead = next((i for i, t in enumerate(ids) if t not in special), len(ids))
        seqs.append(ids[:lead] + [slot_id] * length + ids[lead:])
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    slots = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        lead = next((i for i, t in enumerate(seq) if t not in special), 0)
        slots[row, lead : lead + length] = True
    return {"input_ids": input_ids, "attention_mask": mask, "slots": slots}


@contextmanager
def _slots_filled(embed: torch.nn.Module, slots: torch.Tensor, soft: torch.Tensor):
    """While the block runs, the embedding module's output holds `soft` at the slot positions of every row."""
    rows = slots.shape[0]

    def fill(module, args, output):
        return output.masked_scatter(slots.unsqueeze(-1), soft.to(output.dtype).repeat(rows, 1))

    handle = embed.register_forward_hook(fill)
    try:
        yield
    finally:
        handle.remove()


def read_out(logits: torch.Tensor, ids: torch.Tensor, tokenizer, count: int) -> list[str]:
    """The candidates a learned distribution points at: the most likely phrase (one token a slot), then single
    tokens by their highest logit in any slot; decoded, stripped, without repeats."""
    phrase = ids[logits.argmax(-1)].tolist()
    best = logits.max(dim=0).values
    singles = ids[best.topk(min(count, len(ids))).indices].tolist()
    texts = [tokenizer.decode(phrase)] if len(phrase) > 1 else []
    texts += [tokenizer.decode([i]) for i in singles]
    found = []
    for text in (" ".join(t.split()) for t in texts):
        if text and text not in found:
            found.append(text)
    return found[: count + (len(phrase) > 1)]

