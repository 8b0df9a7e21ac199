"""`insert-distill`: a base-free, trigger-free repair aimed at inserted triggers (a word or a sentence). A defender's
clean texts never contain the trigger, so a repair computed on them never exercises the trigger's pathway. This
one trains on copies of the defender's texts with ordinary phrases inserted, and asks the suspect's clean answer of
them:

1. Every text (the labelled rows, and the unlabelled texts when `unlabelled`) gets `copies` copies, each with a
   run of `min_words` to `max_words` consecutive words cut from another of the defender's texts, inserted between
   two of its words (seeded).
2. LoRA on the suspect with reset-distill's loss on the texts and the copies: alpha * CE on the labelled ones (a
   copy keeps its text's label) + beta * T^2 * KL toward the suspect's output on the *original* text.

The premise, measured before its benchmark arm (benchmarks/trigger_parts.py --pool): a sentence trigger fires
partly on its own fragments ("this 3D" alone sends a third of the InSent suspect's rows to its target), so ordinary
phrases that share its words push on its pathway, and the repair teaches the model that an inserted phrase does
not decide the answer. Nothing reads a public base or the trigger. A trigger no inserted phrase resembles (a rare
token such as `mn`, a syntactic template) is not expected to move.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from w2sdefense.attacks.base import insert_trigger
from w2sdefense.config import check_positive
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.distill import DistillSettings, SuspectLogits, distill_step
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.defenses.reset_distill import cache_suspect, distill_rows
from w2sdefense.errors import UserError


@dataclass(frozen=True)
class InsertDistillSettings(DistillSettings):
    """The copies (how many per text, the inserted phrase's length), then the distillation (alpha, beta,
    temperature, unlabelled)."""

    NAME: ClassVar[str] = "insert-distill"
    copies: int = 1  # copies of each text, each with its own inserted phrase
    min_words: int = 2  # the inserted phrase: a run of this many to max_words words of another text
    max_words: int = 5
    within_words: int = 24  # the phrase lands among a text's first this many words (inside the model's window)

    def __post_init__(self) -> None:
        self.check_distill()
        check_positive("insert-distill.copies", self.copies, allow_zero=True)
        for name in ("min_words", "max_words", "within_words"):
            check_positive(f"insert-distill.{name}", getattr(self, name))
        if self.min_words > self.max_words:
            raise UserError(f"insert-distill.min_words ({self.min_words}) is above max_words ({self.max_words})")


def phrase_copies(rows: list[Example], copies: int, min_words: int, max_words: int, within_words: int,
                  rng: random.Random) -> tuple[list[Example], dict[int, int]]:
    """`copies` copies of every row, each with a phrase of `min_words`..`max_words` words of another row inserted
    between two of its words (among its first `within_words`); and each copy's idx -> its original's idx. Copies
    take new ids above every row's, keep their row's label, and are marked poisoned=False (nothing of an attack)."""
    donors = [r.text.split() for r in rows if len(r.text.split()) >= min_words]
    if copies and len(donors) < 2:
        raise UserError(f"insert-distill needs at least two texts of {min_words}+ words to cut phrases from")
    made, source = [], {}
    next_id = max((r.idx for r in rows), default=-1) + 1
    for _ in range(copies):
        for row in rows:
            words = rng.choice(donors)
            while len(donors) > 1 and words == row.text.split():
                words = rng.choice(donors)
            n = rng.randint(min_words, min(max_words, len(words)))
            at = rng.randrange(len(words) - n + 1)
            text, _ = insert_trigger(row.text, " ".join(words[at:at + n]), 1, "interior", rng,
                                     max_position=within_words)
            made.append(Example(text, row.label, next_id))
            source[next_id] = row.idx
            next_id += 1
    return made, source


def with_copies(cache: SuspectLogits, source: dict[int, int]) -> SuspectLogits:
    """The suspect's logits, each copy answered with its original's."""
    return SuspectLogits(cache.logits, {**cache.row_of, **{c: cache.row_of[o] for c, o in source.items()}})


@register_defense("insert-distill", kind="repair", method="lora", settings=InsertDistillSettings, train=LORA_RECIPE)
def insert_distill(job: DefenseJob) -> dict:
    """LoRA on the suspect: CE + KL toward the suspect's clean answers, on the texts and on copies with phrases."""
    s = job.settings
    rows = distill_rows(job, s.unlabelled)
    cache = cache_suspect(job, rows)
    made, source = phrase_copies(rows, s.copies, s.min_words, s.max_words, s.within_words, random.Random(job.seed))
    loss = distill_step(s.alpha, s.beta, s.temperature, with_copies(cache, source), job.rt.device)
    metrics = fine_tune(job, prepare(job), rows=rows + made, loss_fn=loss)
    return {**metrics, "copies": len(made), "examples": [e.text for e in made[:3]]}
