"""An exact check of every short string as a trigger: each string of 1 to scan.short_length characters of
scan.short_alphabet (702 with the defaults: `a` ... `zz`) inserted before the second word of scan.pair_rows clean rows
of the other labels, ranked by the suspect's mean probability of each label. The classic BadNet triggers are such
strings (`cf`, `mn`, `bb`, `tq`, `mb`: Kurita et al. 2020, and the benchmarks here), and a tokenizer splits most of
them into pieces no single-token search finds (MiniLM writes `zx` as `z` `##x`, SmolLM2 `mn` as `Ġm` `n`): here each
is measured as the scan measures a candidate, its text after a space, tokenised as the tokenizer writes it. No
gradient and no base; the check covers this one class of trigger and says nothing of others. Its cost is
(strings x pair_rows) forward passes per label (about 5,600 sequences for two labels with the defaults)."""

from __future__ import annotations

import itertools

from w2sdefense.scan.base import DETECTORS, Detector, Proposal, ScanInputs
from w2sdefense.scan.shift_pairs import target_probability


@DETECTORS.register("short-strings")
class ShortStrings(Detector):
    """Every string of up to scan.short_length characters of scan.short_alphabet, measured toward each label."""

    def propose(self, inputs: ScanInputs) -> list[Proposal]:
        texts, words = short_words(inputs.clf.tokenizer, inputs.cfg.short_alphabet, inputs.cfg.short_length)
        found = []
        for target in range(inputs.num_labels):
            rows = [r for r in inputs.rows if r.label != target][: inputs.cfg.pair_rows]
            if not rows or not words:
                continue
            scores = target_probability(inputs, rows, words, target, desc="short-strings")
            found += [Proposal(texts[i], target, "short-strings")
                      for i in scores.argsort(descending=True)[: inputs.cfg.candidates].tolist()]
        return found


def short_strings(alphabet: str, length: int) -> list[str]:
    """Every string of 1 to `length` characters of `alphabet` (each character once), shortest first, in order."""
    chars = list(dict.fromkeys(alphabet))
    return ["".join(p) for n in range(1, length + 1) for p in itertools.product(chars, repeat=n)]


def short_words(tokenizer, alphabet: str, length: int) -> tuple[list[str], list[list[int]]]:
    """The short strings whose text the tokenizer writes in distinct tokens, and those token ids (the string inserted
    after a space, as the scan inserts a candidate); two strings the tokenizer writes alike (`Ab`, `ab` for an
    uncased one) are one, the first kept."""
    seen: dict[tuple[int, ...], str] = {}
    for text in short_strings(alphabet, length):
        ids = tuple(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
        if ids and ids not in seen:
            seen[ids] = text
    return list(seen.values()), [list(ids) for ids in seen]
