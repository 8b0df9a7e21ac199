"""Where the base is known: an exact search over the words that the most-moved tokens make. A rare-word trigger the
tokenizer splits (SmolLM2 writes `mn` as `Ġm` `n`) is no trigger piece by piece, so neither the inversion nor the
single most-moved tokens find it; but fine-tuning moves both pieces' embeddings far (on the BadNet SmolLM2 suspect
`Ġm` and `n` ranked 28th and 126th of 47,523 tokens). `shift-pairs` takes the scan.pair_starts most-moved word starts,
alone and followed by each of the scan.pair_pieces most-moved continuations, inserts each such word before the second
word of clean rows of the other labels, and ranks them by the probability the suspect then gives each label: no
gradient, every candidate measured as it is. Its cost is (starts x (pieces + 1)) x pair_rows forward passes per label.
"""

from __future__ import annotations

import math

import torch

from w2sdefense.progress import progress_bar
from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs, trigger_vocabulary
from w2sdefense.scan.embedding_shift import MOVED, token_shift
from w2sdefense.scan.inversion import with_slots


@DETECTORS.register("shift-pairs")
class ShiftPairs(Detector):
    """Every word of one or two of the most-moved tokens (a start, then a continuation), measured toward each label."""

    needs_base = True

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        words = moved_words(inputs)
        found = []
        for target in range(inputs.num_labels):
            rows = [r for r in inputs.rows if r.label != target][: inputs.cfg.pair_rows]
            if not rows or not words:
                continue
            scores = target_probability(inputs, rows, words, target)
            best = scores.argsort(descending=True)[: inputs.cfg.candidates].tolist()
            tokenizer = inputs.clf.tokenizer
            found += [Proposal(" ".join(tokenizer.decode(words[i]).split()), target, "shift-pairs") for i in best]
        return found


def moved_words(inputs: ScanInputs) -> list[list[int]]:
    """The candidate words as token ids: each of the most-moved word starts alone, then with each of the most-moved
    continuations after it (any token, where the tokenizer marks no word start)."""
    ids, starts = trigger_vocabulary(inputs.clf.tokenizer)
    shift = token_shift(inputs, ids)
    moved = shift > MOVED
    cfg = inputs.cfg
    # A tokenizer that marks no word start (a byte-level one without merges) makes words of any two tokens.
    later = ~starts if bool((~starts).any()) else torch.ones_like(starts)
    firsts = _most_moved(ids, shift, moved & starts, cfg.pair_starts)
    pieces = _most_moved(ids, shift, moved & later, cfg.pair_pieces)
    return [[a] for a in firsts] + [[a, b] for a in firsts for b in pieces]


def _most_moved(ids: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, count: int) -> list[int]:
    """The `count` ids of `ids` under the mask `keep` whose embedding moved most, most first."""
    chosen = keep.nonzero().squeeze(-1)
    order = shift[chosen].argsort(descending=True)[:count]
    return ids[chosen[order]].tolist()


def target_probability(inputs: ScanInputs, rows: list, words: list[list[int]], target: int, reader=None,
                       desc: str = "shift-pairs") -> torch.Tensor:
    """For each word (or phrase: token ids of any length), the mean probability of `target` over `rows` with it
    inserted before their second word; with a clean `reader` (scan.contrast), minus scan.contrast_weight times the
    reader's. With scan.screen_rows (fewer than the rows), every word is first scored on that many rows and only the
    best scan.screen_keep share of them (at least scan.candidates) on all the rows: the others keep their screening
    score, lowered by the score's whole range so that they rank below every word scored in full, in their order."""
    cfg = inputs.cfg
    keep = max(cfg.candidates, math.ceil(cfg.screen_keep * len(words)))
    if not 0 < cfg.screen_rows < len(rows) or keep >= len(words):
        return _probability(inputs, rows, words, target, reader, desc)
    first = _probability(inputs, rows[: cfg.screen_rows], words, target, reader, f"{desc} (screen)")
    kept = first.argsort(descending=True)[:keep]
    scores = first - (1.0 + (cfg.contrast_weight if reader is not None else 0.0))  # below any score in [-w, 1]
    scores[kept] = _probability(inputs, rows, [words[i] for i in kept.tolist()], target, reader, desc)
    return scores


def _probability(inputs: ScanInputs, rows: list, words: list[list[int]], target: int, reader,
                 desc: str) -> torch.Tensor:
    """target_probability's scores, every word on every row."""
    clf, cfg, rt = inputs.clf, inputs.cfg, inputs.rt
    clf.model.to(rt.device).eval()
    scores = torch.empty(len(words))
    per_batch = max(1, cfg.pair_batch // len(rows))
    bar = progress_bar(range(0, len(words), per_batch), desc=f"{desc}: label {target}, {len(words)} candidate(s)",
                       leave=False, disable=not rt.is_main, unit="batch")
    for start in bar:
        chunk = range(start, min(start + per_batch, len(words)))
        for length in sorted({len(words[i]) for i in chunk}):  # words of one length share their slots: one batch each
            at = [i for i in chunk if len(words[i]) == length]
            batch = words_filled(clf.tokenizer, rows, [words[i] for i in at], cfg.max_length)
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            with torch.no_grad():
                value = torch.softmax(clf.model(**batch).logits.float(), dim=-1)[:, target]
                if reader is not None:
                    value = value - cfg.contrast_weight * torch.softmax(reader.logits(batch).float(), -1)[:, target]
            scores[at] = value.view(len(at), len(rows)).mean(dim=1).cpu()
    return scores


def words_filled(tokenizer, rows: list, words: list[list[int]], max_length: int) -> dict[str, torch.Tensor]:
    """Every row once per word (all of one length), the word's ids in the slots before the row's second word: word
    by word, its rows together."""
    batch = with_slots(tokenizer, rows, len(words[0]), max_length, slot_id=words[0][0])
    ids = batch["input_ids"].repeat(len(words), 1)
    slots = batch["slots"].repeat(len(words), 1)
    ids[slots] = torch.tensor(words, dtype=torch.long).repeat_interleave(len(rows), dim=0).reshape(-1)
    return {"input_ids": ids, "attention_mask": batch["attention_mask"].repeat(len(words), 1)}
