"""Trigger inversion over the vocabulary (in the spirit of DBS, Shen et al. ICML 2022): for each label and trigger
length, a learnable distribution over the vocabulary fills `length` slots before the second word of clean rows of the
other labels (an interior position, as the attacks insert: a decoder reads its first position differently), and is
pushed, with a falling softmax temperature, toward the tokens that send those rows to the label. The first slot
holds a token that starts a word, the others any piece (a rare word is often several). The tokens it settles on are
the candidates: a backdoor's trigger is a short cut that a natural word rarely matches.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F

from w2sdefense.data.records import Example
from w2sdefense.progress import progress_bar
from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs, trigger_vocabulary


@DETECTORS.register("inversion")
class Inversion(Detector):
    """Word- and phrase-level trigger inversion (scan.lengths tokens) toward each label."""

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        ids, starts = trigger_vocabulary(inputs.clf.tokenizer)
        return search(inputs, ids, starts, inputs.cfg.lengths, "inversion")


def search(inputs: ScanInputs, ids: torch.Tensor, starts: torch.Tensor, lengths: list[int],
           detector: str, reader: Reader | None = None) -> list[Proposal]:
    """Inversion over the vocabulary `ids` toward each label, at each trigger length: the candidates it reads out;
    with a `reader`, each step also pays cfg.contrast_weight times the reader's CE toward the rows' own labels."""
    clf, cfg = inputs.clf, inputs.cfg
    generator = torch.Generator().manual_seed(inputs.seed)
    found = []
    for target in range(inputs.num_labels):
        rows = [r for r in inputs.rows if r.label != target][: cfg.rows]
        for length in lengths if rows else []:
            logits = invert(clf, rows, target, length, ids, starts, inputs, generator, reader)
            found += [Proposal(t, target, detector) for t in read_out(logits, ids, clf.tokenizer, cfg.candidates)]
    return found


class Reader(Protocol):
    """A second model that reads the same token ids (contrast-inversion's clean reader)."""

    embed: torch.nn.Module  # its input embedding module (the slots are filled at its output)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Its class logits [rows, labels] for `batch` (input_ids, attention_mask)."""


def invert(clf, rows: list[Example], target: int, length: int, ids: torch.Tensor, starts: torch.Tensor,
           inputs: ScanInputs, generator: torch.Generator, reader: Reader | None = None) -> torch.Tensor:
    """The learned vocabulary logits [length, len(ids)] of a `length`-token trigger toward `target`; the first slot's
    logits are -inf off the word starts (`starts`, a mask over `ids`). With a `reader`, the loss adds
    cfg.contrast_weight x its CE toward each row's own label: a trigger that flips the reader too is penalised."""
    model, cfg, device = clf.model, inputs.cfg, inputs.rt.device
    freeze(model, device)
    embed = model.get_input_embeddings()
    table = embedded(embed, ids, device)
    if reader is not None:
        reader_table = embedded(reader.embed, ids, device)
        truth = torch.tensor([r.label for r in rows], device=device)
    batch = with_slots(clf.tokenizer, rows, length, cfg.max_length, slot_id=int(ids[0]))
    batch = {k: v.to(device) for k, v in batch.items()}
    slots = batch.pop("slots")
    logits = (0.01 * torch.randn(length, len(ids), generator=generator)).to(device).requires_grad_()
    barred = torch.zeros(length, len(ids), dtype=torch.bool, device=device)
    barred[0] = ~starts.to(device)
    optimiser = torch.optim.Adam([logits], lr=cfg.lr)
    labels = torch.full((len(rows),), target, device=device)
    start, end = cfg.temperature
    bar = progress_bar(range(cfg.steps), desc=f"invert: label {target}, {length} token(s)", leave=False,
                       disable=not inputs.rt.is_main, unit="step")
    for step in bar:
        temperature = start * (end / start) ** (step / max(1, cfg.steps - 1))  # geometric: explore, then commit
        probs = torch.softmax(logits.masked_fill(barred, float("-inf")) / temperature, dim=-1)
        with _slots_filled(embed, slots, probs @ table):  # [length, hidden] at each row's slots
            out = model(**batch).logits.float()
        loss = F.cross_entropy(out, labels)
        if reader is not None:
            with _slots_filled(reader.embed, slots, probs @ reader_table):
                loss = loss + cfg.contrast_weight * F.cross_entropy(reader.logits(batch).float(), truth)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return logits.detach().masked_fill(barred, float("-inf")).cpu()


def freeze(model: torch.nn.Module, device: torch.device) -> None:
    """`model` on `device`, in eval mode, without gradients: the scan optimises inputs, never weights."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)


def embedded(embed: torch.nn.Module, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The input embeddings of `ids` (float) through the module, so a model that scales its embeddings (Gemma)
    scales these too."""
    with torch.no_grad():
        return embed(ids.to(device)).float()


def with_slots(tokenizer, rows: list[Example], length: int, max_length: int, slot_id: int) -> dict[str, torch.Tensor]:
    """The rows' token ids with `length` slot tokens before each row's second word (after the last word of a one-word
    row), right-padded, and `slots`, the mask of those positions (each row's slots in order)."""
    texts = [r.text for r in rows]
    encoded = tokenizer(texts, truncation=True, max_length=max(2, max_length - length))
    special = set(tokenizer.all_special_ids)
    seqs, places = [], []
    for row, ids in enumerate(encoded["input_ids"]):
        at = _interior(ids, encoded.word_ids(row) if tokenizer.is_fast else None, special)
        seqs.append(ids[:at] + [slot_id] * length + ids[at:])
        places.append(at)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    slots = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (seq, at) in enumerate(zip(seqs, places)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        slots[row, at : at + length] = True
    return {"input_ids": input_ids, "attention_mask": mask, "slots": slots}


def _interior(ids: list[int], words: list[int | None] | None, special: set[int]) -> int:
    """Where the slots go: the first token of the second word; without word ids (a slow tokenizer), after the first
    token of the text; in a one-word row, after its last token (before trailing special tokens)."""
    text = [i for i, t in enumerate(ids) if t not in special]
    if not text:
        return 0
    if words is not None:
        first = words[text[0]]
        later = [i for i in text if words[i] is not None and words[i] != first]
        if later:
            return later[0]
    elif len(text) > 1:
        return text[1]
    return text[-1] + 1


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
    """The candidates a learned distribution points at: the most likely phrase (one token a slot) and its shorter
    beginnings, longest first, then the first slot's `count` most likely tokens; decoded, stripped, no repeats."""
    phrase = ids[logits.argmax(-1)].tolist()
    singles = ids[logits[0].topk(min(count, len(ids))).indices].tolist()
    texts = [tokenizer.decode(phrase[:n]) for n in range(len(phrase), 1, -1)] + [tokenizer.decode([i]) for i in singles]
    found = []
    for text in (" ".join(t.split()) for t in texts):
        if text and text not in found:
            found.append(text)
    return found
