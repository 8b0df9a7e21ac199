"""`onion` (Qi et al., 2021): an input filter that edits instead of rejecting. A word whose removal lowers a
language model's perplexity of the text by more than `threshold` is an outlier (a rare-word trigger
reads as one) and is deleted before the model classifies the text. The language model is any causal LM
by name, by default the packaged SmolLM2 with its LM head (no GPT-2 weights ship offline). It runs the
LM once per word of every input: its cost per input is reported, and `test_rows` measures it on a seeded
sample of the test set where the whole set would take hours (the 135M SmolLM2 on 2 CPU cores scores about
12 texts a second, and an SST-2 input makes about 20).

The paper's threshold is 0, which on our victims edits most clean inputs (45 of 50 clean SST-2 dev rows with
SmolLM2 as the LM). `edit_rate` calibrates it instead, as STRIP's and RAP's thresholds are and as the RAP
authors' ONION baseline does (a percentile of clean rows' suspicion): the threshold becomes the score that
about that share of `calibrate_rows` clean dev rows exceed, so about that share of clean inputs get a word
removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from w2sdefense.config import check_positive, to_dict
from w2sdefense.defenses.base import DefenseJob, register_defense
from w2sdefense.defenses.filtering import write_filter
from w2sdefense.errors import UserError
from w2sdefense.eval.filtering import Screened
from w2sdefense.models import Classifier
from w2sdefense.models.language import LanguageModel, load_language_model, perplexities
from w2sdefense.runtime import Runtime


@dataclass(frozen=True)
class OnionSettings:
    lm: str = "smollm2-135m"  # the causal LM that scores fluency
    threshold: float = 0.0  # remove words whose removal lowers perplexity by more than this (the paper's 0)
    # Instead of `threshold`: the share of clean dev rows allowed an edit (0: use `threshold` as given).
    edit_rate: float = 0.0
    calibrate_rows: int = 50  # clean dev rows the edits are measured (and edit_rate calibrated) on
    max_words: int = 64  # words considered per input (the rest are kept as they are)
    batch_size: int = 32
    max_length: int = 128
    # Evaluate on a seeded sample of this many clean test rows and their triggered versions (0: all);
    # the model without the filter is measured on the same rows beside it.
    test_rows: int = 0

    def __post_init__(self) -> None:
        for name in ("max_words", "batch_size", "max_length", "calibrate_rows"):
            check_positive(f"onion.{name}", getattr(self, name))
        if not 0 <= self.edit_rate < 1:
            raise UserError(f"onion.edit_rate must be in [0, 1); got {self.edit_rate}")
        if self.edit_rate > 0 and self.threshold != 0.0:
            raise UserError("set one of onion.threshold and onion.edit_rate (edit_rate calibrates the threshold)")
        check_positive("onion.test_rows", self.test_rows, allow_zero=True)


class OnionFilter:
    def __init__(self, settings: OnionSettings, lm: LanguageModel | None = None, threshold: float | None = None):
        self.settings, self._lm = settings, lm
        self.threshold = settings.threshold if threshold is None else threshold
        self.test_rows = settings.test_rows

    @property
    def lm(self) -> LanguageModel:
        if self._lm is None:
            self._lm = load_language_model(self.settings.lm)
        return self._lm

    def suspicion(self, texts: list[str], rt: Runtime) -> list[list[float]]:
        """Per input, per word (up to max_words): perplexity of the text minus that without the word."""
        candidates, spans = [], []
        for text in texts:
            words = text.split()
            n = min(len(words), self.settings.max_words) if len(words) > 1 else 0
            spans.append((len(candidates), n))
            candidates.append(text)
            candidates += [" ".join(words[:i] + words[i + 1:]) for i in range(n)]
        ppl = perplexities(self.lm, candidates, self.settings.batch_size, self.settings.max_length, rt.device,
                           desc=f"onion: {len(candidates)} texts" if rt.is_main else None)
        return [[ppl[start] - ppl[start + 1 + i] for i in range(n)] for start, n in spans]

    def screen(self, clf: Classifier, texts: list[str], rt: Runtime) -> Screened:
        edited, scores = [], []
        for text, suspicion in zip(texts, self.suspicion(texts, rt)):
            words = text.split()
            drop = {i for i, s in enumerate(suspicion) if s > self.threshold}
            if len(drop) >= len(words):
                drop = set()  # never leave the model an empty input
            edited.append(" ".join(w for i, w in enumerate(words) if i not in drop) if drop else text)
            scores.append(max(suspicion, default=0.0))
        return Screened(edited, [False] * len(texts), scores)

    def calibrate(self, texts: list[str], rt: Runtime) -> int:
        """Set the threshold from clean texts when edit_rate asks for it; how many of them it edits."""
        best = [max(s) for s in self.suspicion(texts, rt) if s]  # a one-word text has no word to remove
        if self.settings.edit_rate > 0 and best:
            self.threshold = float(torch.quantile(torch.tensor(best, dtype=torch.float64), 1 - self.settings.edit_rate))
        return sum(b > self.threshold for b in best)

    def state(self) -> dict:
        return {"threshold": self.threshold}


def _load(settings: OnionSettings, state: dict) -> OnionFilter:
    return OnionFilter(settings, threshold=state.get("threshold"))  # records before edit_rate hold no threshold


@register_defense("onion", kind="input-filter", method=None, settings=OnionSettings, load_filter=_load)
def onion(job: DefenseJob) -> dict:
    """Delete the words whose removal makes a language model find the text more fluent."""
    settings = job.settings
    flt = OnionFilter(settings)
    dev = job.splits.dev[:settings.calibrate_rows]  # a sample to measure (and calibrate) how much ONION edits
    changed = flt.calibrate([e.text for e in dev], job.rt)
    write_filter(job.out_dir, "onion", job.student, to_dict(settings), flt, job.rt, job.seed)
    return {"threshold": flt.threshold, "dev_rows_edited": changed, "dev_rows_checked": len(dev), "steps": 0,
            "trainable_params": 0}
