"""`strip` (Gao et al., 2021; the text variant of STRIP-ViTA): an input filter. Each input is blended with
clean texts (a share of its words replaced by words of a random clean dev text) several times; a
backdoored input keeps its prediction whatever is blended in, so the mean entropy of the blended copies'
predictions stays low. Inputs below a threshold are rejected; the threshold is the entropy quantile of
clean dev rows at the stated false-rejection rate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from w2sdefense.config import check_positive, to_dict
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, register_defense
from w2sdefense.defenses.filtering import calibration_rows, frr_threshold, write_filter
from w2sdefense.eval.filtering import Screened
from w2sdefense.errors import UserError
from w2sdefense.models.predict import classify_rows
from w2sdefense.models import Classifier, load_classifier
from w2sdefense.runtime import Runtime


@dataclass(frozen=True)
class StripSettings:
    copies: int = 16  # blended copies per input
    replace_ratio: float = 0.5  # share of an input's words replaced in each copy
    frr: float = 0.05  # false-rejection rate on clean dev rows that sets the threshold
    blend_rows: int = 200  # clean dev texts kept to blend with
    max_length: int = 128
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("copies", "blend_rows", "max_length", "batch_size"):
            check_positive(f"strip.{name}", getattr(self, name))
        if not 0 < self.replace_ratio <= 1:
            raise UserError(f"strip.replace_ratio must be in (0, 1]; got {self.replace_ratio}")
        if not 0 <= self.frr < 1:
            raise UserError(f"strip.frr must be in [0, 1); got {self.frr}")


class StripFilter:
    test_rows = 0  # cheap enough for the whole test set

    def __init__(self, settings: StripSettings, blend_texts: list[str], seed: int, threshold: float | None = None):
        if not blend_texts:
            raise UserError("strip needs clean dev texts to blend inputs with")
        self.settings, self.blend, self.seed, self.threshold = settings, blend_texts, seed, threshold

    def blended(self, text: str) -> list[str]:
        """The input's copies, each with a share of its words replaced by a clean text's words."""
        rng = random.Random(f"{self.seed}:{text}")  # the same copies for the same input, in any order
        words = text.split()
        copies = []
        for _ in range(self.settings.copies):
            donor = rng.choice(self.blend).split()
            copies.append(" ".join(rng.choice(donor) if rng.random() < self.settings.replace_ratio else w
                                   for w in words))
        return copies

    def entropies(self, clf: Classifier, texts: list[str], rt: Runtime) -> list[float]:
        """Mean prediction entropy (nats) over each input's blended copies."""
        rows = [Example(text=c, label=0, idx=i) for i, c in enumerate(c for t in texts for c in self.blended(t))]
        if not rows:
            return []
        logits = classify_rows(clf, rows, self.settings.max_length, self.settings.batch_size, rt, "strip")
        probs = logits.softmax(-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        return entropy.view(len(texts), self.settings.copies).mean(-1).tolist()

    def screen(self, clf: Classifier, texts: list[str], rt: Runtime) -> Screened:
        scores = self.entropies(clf, texts, rt)
        # No threshold (frr=0): nothing is rejected.
        return Screened(list(texts), [self.threshold is not None and s < self.threshold for s in scores], scores)

    def state(self) -> dict:
        return {"threshold": self.threshold, "seed": self.seed, "blend_texts": self.blend}


def _load(settings: StripSettings, state: dict) -> StripFilter:
    return StripFilter(settings, state["blend_texts"], state["seed"], state["threshold"])


@register_defense("strip", kind="input-filter", method=None, settings=StripSettings, load_filter=_load)
def strip(job: DefenseJob) -> dict:
    """Reject inputs whose prediction survives blending with clean text (low entropy)."""
    settings = job.settings
    dev = calibration_rows(job, "strip")
    clf = load_classifier(job.student, job.splits.num_labels, job.rt.dtype)
    rng = random.Random(job.seed)
    blend = [e.text for e in rng.sample(dev, min(settings.blend_rows, len(dev)))]
    flt = StripFilter(settings, blend, job.seed)
    entropies = flt.entropies(clf, [e.text for e in dev], job.rt)
    flt.threshold, rejected = frr_threshold(entropies, settings.frr)
    dev_frr = rejected / len(dev)
    write_filter(job.out_dir, "strip", job.student, to_dict(settings), flt, job.rt, job.seed)
    return {"threshold": flt.threshold, "dev_false_rejection_rate": dev_frr, "dev_rows": len(dev),
            "dev_entropy_mean": sum(entropies) / len(entropies), "steps": 0, "trainable_params": 0}
