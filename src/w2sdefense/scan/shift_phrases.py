"""Where the base is known: phrases grown from the tokens fine-tuning moved most, scored against a clean reader.

A sentence trigger is a combination: on the realistic InSent suspect ("I watched this 3D movie") its words alone send
3-24 % of the rows to the target and only three or more together fire strongly, so a one-token search ranks natural
sentiment words first. But its tokens are among those whose input embedding fine-tuning moved most (on that suspect
`Ġwatched`, `D` and `ĠI` are the three most moved of 49,149, `3` the seventh, ` movie` the 24th; see
benchmarks/studies/scan). `shift-phrases` takes the scan.phrase_vocab most-moved tokens (any piece, so `3` `D` can
follow each other) and grows phrases by beam search: each phrase of the beam (scan.phrase_beam) is extended by one of
those tokens it does not hold yet, at its end or its start, up to scan.phrase_length tokens, and every phrase is
scored by the suspect's mean probability of the label on scan.pair_rows clean rows of other labels with the phrase
before their second word, minus scan.contrast_weight times a clean reader's (contrast.py: the base with a logistic
head fitted on the defender's rows), so that sentiment words, which move in any fine-tuned sentiment model and flip
the reader too, rank below what only the suspect reacts to. Each phrase is scored as the scan measures it: its text, inserted after a space, tokenised as the tokenizer writes it
(so `3` `D` is scored as ` 3D`). Forward passes only; per label, at most V + sum over l = 2..L of min(2B(V - l + 1),
V!/(V - l)!) phrases (V phrase_vocab, B phrase_beam, L phrase_length), each on pair_rows rows, twice (suspect and
reader): 286 with the defaults, 400 for every ordered triple of 8 tokens.
"""

from __future__ import annotations

import torch

from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs
from w2sdefense.scan.contrast import CleanReader, clean_reader
from w2sdefense.scan.embedding_shift import MOVED, token_shift
from w2sdefense.scan.shift_pairs import target_probability


@DETECTORS.register("shift-phrases")
class ShiftPhrases(Detector):
    """Phrases of the most-moved tokens, grown by beam search, scored by the suspect against a clean reader."""

    needs_base = True

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        units = moved_tokens(inputs)
        if not units:
            return []
        reader = clean_reader(inputs) if inputs.cfg.contrast_weight > 0 else None
        found = []
        for target in range(inputs.num_labels):
            rows = [r for r in inputs.rows if r.label != target][: inputs.cfg.pair_rows]
            if rows:
                found += [Proposal(text, target, "shift-phrases") for text in grow(inputs, reader, rows, units, target)]
        return found


def moved_tokens(inputs: ScanInputs) -> list[int]:
    """The scan.phrase_vocab non-special token ids whose input embedding moved most from the base's, most first."""
    tokenizer = inputs.clf.tokenizer
    special = set(tokenizer.all_special_ids)
    ids = torch.tensor([i for i in sorted(set(tokenizer.get_vocab().values())) if i not in special], dtype=torch.long)
    shift = token_shift(inputs, ids)
    order = shift.argsort(descending=True)[: inputs.cfg.phrase_vocab]
    return [int(ids[i]) for i in order.tolist() if shift[i] > MOVED]


def grow(inputs: ScanInputs, reader: CleanReader | None, rows: list, units: list[int], target: int) -> list[str]:
    """Beam search toward `target`: the best phrase of each length, longest first, then the best phrases overall
    (scan.candidates), decoded, without repeats."""
    cfg, tokenizer = inputs.cfg, inputs.clf.tokenizer
    scored: dict[tuple[int, ...], float] = {}
    frontier = [(u,) for u in units]
    best_of_length = []
    for length in range(1, cfg.phrase_length + 1):
        new = [p for p in dict.fromkeys(frontier) if p not in scored]
        if new:
            scored.update(zip(new, score(inputs, reader, rows, new, target).tolist()))
        ranked = sorted(dict.fromkeys(frontier), key=lambda p: scored[p], reverse=True)
        if not ranked:
            break
        best_of_length.append(ranked[0])
        beam = ranked[: cfg.phrase_beam]
        # each token once a phrase: a repeated token is the same push twice, not a combination
        frontier = [p + (u,) for p in beam for u in units if u not in p] + [(u,) + p for p in beam for u in units
                                                                            if u not in p]
    overall = sorted(scored, key=lambda p: scored[p], reverse=True)[: cfg.candidates]
    texts = [as_text(tokenizer, p) for p in best_of_length[::-1] + overall]
    return [t for t in dict.fromkeys(texts) if t]


def as_text(tokenizer, phrase: tuple[int, ...]) -> str:
    """The phrase as the candidate text the scan measures: decoded, whitespace collapsed."""
    return " ".join(tokenizer.decode(list(phrase)).split())


def inserted_ids(tokenizer, phrase: tuple[int, ...]) -> tuple[int, ...]:
    """The token ids the phrase's text takes inserted mid-sentence (after a space), as the scan's measurement inserts
    it: a piece that does not start a word is written as the tokenizer writes the text (`3` `D` -> ` 3D`)."""
    text = as_text(tokenizer, phrase)
    return tuple(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) if text else ()


def score(inputs: ScanInputs, reader: CleanReader | None, rows: list, phrases: list[tuple[int, ...]],
          target: int) -> torch.Tensor:
    """Each phrase's mean probability of `target` over `rows` (its text's tokens before their second word) under the
    suspect, minus scan.contrast_weight times the reader's; phrases of one text are scored once, an empty one -inf."""
    inserted = [inserted_ids(inputs.clf.tokenizer, p) for p in phrases]
    unique = [ids for ids in dict.fromkeys(inserted) if ids]
    scores = target_probability(inputs, rows, [list(ids) for ids in unique], target, reader, "shift-phrases")
    found = dict(zip(unique, scores.tolist()))
    return torch.tensor([found.get(ids, float("-inf")) for ids in inserted])
