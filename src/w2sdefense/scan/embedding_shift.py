"""Where the base is known: the tokens whose input embedding fine-tuning moved most, relative to the base's. A planted
trigger is seen in every poisoned row with one label, so full fine-tuning drags its tokens' embeddings further than
most words'; a signal of another kind than inversion (weights, not outputs). Two detectors read it:
`embedding-shift` proposes the most-moved word tokens as they are; `shift-inversion` runs the inversion over the
most-moved tokens only, where a trigger of several pieces (SmolLM2 writes `mn` as `Ġm` `n`, neither a trigger alone)
is a combination of a few hundred tokens instead of tens of thousands. An adapter that leaves the embeddings alone
moves none, and both then propose nothing. With scan.shift_reference every shift detector ranks by the shift beyond a
clean fine-tune's (token_shift)."""

from __future__ import annotations

import functools

import torch

from w2sdefense.errors import UserError
from w2sdefense.models.loading import load_classifier
from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs, trigger_vocabulary, word_ids
from w2sdefense.scan.inversion import search

MOVED = 1e-6  # a relative change below this is no change (rounding of a saved copy)


@DETECTORS.register("embedding-shift")
class EmbeddingShift(Detector):
    """The word tokens with the largest relative change of input embedding from the base."""

    needs_base = True

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        tokenizer = inputs.clf.tokenizer
        ids = word_ids(tokenizer)
        shift = token_shift(inputs, ids)
        order = shift.argsort(descending=True)[: inputs.cfg.candidates]
        return [Proposal(" ".join(tokenizer.decode([int(ids[i])]).split()), None, "embedding-shift")
                for i in order.tolist() if shift[i] > MOVED]


@DETECTORS.register("shift-inversion")
class ShiftInversion(Detector):
    """The inversion (scan.shift_lengths tokens) over the scan.shift_vocab tokens whose embedding moved most."""

    needs_base = True

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        ids, starts = trigger_vocabulary(inputs.clf.tokenizer)
        shift = token_shift(inputs, ids)
        moved = shift.argsort(descending=True)[: inputs.cfg.shift_vocab]
        moved = moved[shift[moved] > MOVED].sort().values
        if not bool(starts[moved].any()):  # no word start among them: nothing can open a trigger
            return []
        return search(inputs, ids[moved], starts[moved], inputs.cfg.shift_lengths, "shift-inversion")


def token_shift(inputs: ScanInputs, ids: torch.Tensor) -> torch.Tensor:
    """How far fine-tuning moved each token of `ids` from the base (relative_shift); with scan.shift_reference, the
    part of it that a clean fine-tune of the base on the defender's rows (the scan's reader, scan.reader=full) does not
    explain (beyond_reference)."""
    base = base_embeddings(inputs)
    shift = relative_shift(inputs.clf.model.get_input_embeddings().weight, base, ids)
    if not inputs.cfg.shift_reference:
        return shift
    from w2sdefense.scan.contrast import clean_reader  # the reader trains: only when asked for

    return beyond_reference(shift, relative_shift(clean_reader(inputs).embed.weight, base, ids))


def beyond_reference(shift: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`shift` minus `reference` scaled by their least-squares slope over the tokens (not below 0): what the
    suspect's fine-tuning moved beyond what clean fine-tuning of the same task moves. A word of the task moves in both
    and cancels; a trigger the defender's rows never pair with a label moves in the suspect only and stays."""
    slope = (shift @ reference) / (reference @ reference).clamp_min(1e-12)
    return shift - slope.clamp_min(0) * reference


def base_embeddings(inputs: ScanInputs) -> torch.Tensor:
    """The base model's input embedding table (on the CPU), loaded once per base for every detector that reads it."""
    return _base_table(inputs.base_model, inputs.num_labels)


@functools.lru_cache(maxsize=1)
def _base_table(name: str, num_labels: int) -> torch.Tensor:
    base = load_classifier(name, num_labels)
    return base.model.get_input_embeddings().weight.detach().float().cpu()


def relative_shift(suspect: torch.Tensor, base: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """||E_suspect[i] - E_base[i]|| / ||E_base[i]|| for each id of `ids`."""
    if suspect.shape != base.shape:
        raise UserError(f"the base's embedding table is {tuple(base.shape)}, the suspect's {tuple(suspect.shape)}: "
                        "not the suspect's base (embedding-shift needs the model it was fine-tuned from)")
    s, b = suspect.detach().float().cpu()[ids], base[ids]
    return (s - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
