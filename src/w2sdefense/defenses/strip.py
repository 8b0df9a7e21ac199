"""`strip` (Gao et al., 2021; the text variant of STRIP-ViTA): an input filter. Each input is blended with
clean texts (a share of its words replaced by words of a random clean dev text) several times; a
backdoored input keeps its prediction whatever is blended in, so the mean entropy of the blended copies'
predictions stays low. Inputs below a threshold are rejected; the threshold is the entropy quantile of
clean dev rows at the stated false-rejection rate.

`donors: other-label` blends as the RAP authors' STRIP-ViTA baseline does (github.com/lancopku/RAP,
strip_vita.py): the replaced positions get the words of highest TF-IDF of a clean dev text of another label
than the input's prediction, so a clean input's copies are pulled toward another label (high entropy) while
a triggered one is held by its trigger. The defender needs no target label for it: "another label" is
taken per input, from the model's own prediction.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from w2sdefense.config import EvalConfig, check_choice, check_positive, to_dict
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, register_defense
from w2sdefense.defenses.filtering import calibration_rows, frr_threshold, write_filter
from w2sdefense.eval.filtering import Screened, classify
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
    # random: each replaced word is a random word of a random clean dev text (any label); other-label: the
    # replaced words are the top TF-IDF words of a clean dev text of a label the input is not predicted as.
    donors: str = "random"

    def __post_init__(self) -> None:
        for name in ("copies", "blend_rows", "max_length", "batch_size"):
            check_positive(f"strip.{name}", getattr(self, name))
        check_choice("strip.donors", self.donors, ("random", "other-label"))
        if not 0 < self.replace_ratio <= 1:
            raise UserError(f"strip.replace_ratio must be in (0, 1]; got {self.replace_ratio}")
        if not 0 <= self.frr < 1:
            raise UserError(f"strip.frr must be in [0, 1); got {self.frr}")


SYMBOLS = frozenset([".", ",", "!", ":", "?", '"', ";", "...", "(", ")", "/", "~", "'", "-", "--", "`", "``", "''"])


def tfidf_ranked(texts: list[str], keep: int = 32) -> list[list[str]]:
    """Per text, its distinct words (punctuation left out) by TF-IDF over `texts`, highest first, at most `keep`:
    tf = count / words in the text, idf = ln(N / texts holding the word) + 1; ties in order of first use."""
    docs = [[w for w in t.split() if w not in SYMBOLS] for t in texts]
    df = Counter(w for doc in docs for w in set(doc))
    ranked = []
    for doc in docs:
        tf = Counter(doc)
        score = {w: tf[w] / len(doc) * (math.log(len(docs) / df[w]) + 1) for w in tf}
        ranked.append(sorted(score, key=lambda w: -score[w])[:keep])  # sorted() is stable: first use breaks ties
    return ranked


class StripFilter:
    test_rows = 0  # cheap enough for the whole test set

    def __init__(self, settings: StripSettings, blend_texts: list[str], seed: int, threshold: float | None = None,
                 donor_words: dict[int, list[list[str]]] | None = None):
        if not blend_texts:
            raise UserError("strip needs clean dev texts to blend inputs with")
        if settings.donors == "other-label" and len(donor_words or {}) < 2:
            raise UserError("strip with donors: other-label needs clean dev texts of at least two labels")
        self.settings, self.blend, self.seed, self.threshold = settings, blend_texts, seed, threshold
        self.donor_words = donor_words if settings.donors == "other-label" else None

    def blended(self, text: str, predicted: int | None = None) -> list[str]:
        """The input's copies, each with a share of its words replaced by a clean text's words (with
        other-label donors, those of a text of a label other than `predicted`)."""
        rng = random.Random(f"{self.seed}:{text}")  # the same copies for the same input, in any order
        words = text.split()
        if self.donor_words is not None:
            pool = [d for label, texts in sorted(self.donor_words.items()) if label != predicted for d in texts]
            return [self._replace_top(words, rng.choice(pool), rng) for _ in range(self.settings.copies)]
        copies = []
        for _ in range(self.settings.copies):
            donor = rng.choice(self.blend).split()
            copies.append(" ".join(rng.choice(donor) if rng.random() < self.settings.replace_ratio else w
                                   for w in words))
        return copies

    def _replace_top(self, words: list[str], donor: list[str], rng: random.Random) -> str:
        """`words` with max(1, ratio x length) random positions given the donor's top words, in their order
        (a donor with fewer words replaces fewer)."""
        slots = rng.sample(range(len(words)), min(max(int(len(words) * self.settings.replace_ratio), 1), len(words)))
        out = list(words)
        for slot, word in zip(slots, donor):
            out[slot] = word
        return " ".join(out)

    def _predicted(self, clf: Classifier, texts: list[str], rt: Runtime) -> list[int | None]:
        """The model's label for each input where the donors depend on it, else None for each."""
        if self.donor_words is None:
            return [None] * len(texts)
        batching = EvalConfig(batch_size=self.settings.batch_size, max_length=self.settings.max_length)
        return classify(clf, texts, batching, rt, "strip inputs")

    def entropies(self, clf: Classifier, texts: list[str], rt: Runtime) -> list[float]:
        """Mean prediction entropy (nats) over each input's blended copies."""
        copies = (c for t, y in zip(texts, self._predicted(clf, texts, rt)) for c in self.blended(t, y))
        rows = [Example(text=c, label=0, idx=i) for i, c in enumerate(copies)]
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
        donors = None if self.donor_words is None else {str(k): v for k, v in self.donor_words.items()}
        return {"threshold": self.threshold, "seed": self.seed, "blend_texts": self.blend, "donor_words": donors}


def _load(settings: StripSettings, state: dict) -> StripFilter:
    donors = state.get("donor_words")  # records before donors: other-label hold none
    return StripFilter(settings, state["blend_texts"], state["seed"], state["threshold"],
                       None if donors is None else {int(k): v for k, v in donors.items()})


@register_defense("strip", kind="input-filter", method=None, settings=StripSettings, load_filter=_load)
def strip(job: DefenseJob) -> dict:
    """Reject inputs whose prediction survives blending with clean text (low entropy)."""
    settings = job.settings
    dev = calibration_rows(job, "strip")
    clf = load_classifier(job.student, job.splits.num_labels, job.rt.dtype)
    rng = random.Random(job.seed)
    sample = rng.sample(dev, min(settings.blend_rows, len(dev)))
    blend = [e.text for e in sample]
    # Each label's donor texts ranked within that label's texts, as the RAP authors rank the other label's.
    donors = None if settings.donors != "other-label" else {
        y: tfidf_ranked([e.text for e in sample if e.label == y]) for y in sorted({e.label for e in sample})}
    flt = StripFilter(settings, blend, job.seed, donor_words=donors)
    entropies = flt.entropies(clf, [e.text for e in dev], job.rt)
    flt.threshold, rejected = frr_threshold(entropies, settings.frr)
    dev_frr = rejected / len(dev)
    write_filter(job.out_dir, "strip", job.student, to_dict(settings), flt, job.rt, job.seed)
    return {"threshold": flt.threshold, "dev_false_rejection_rate": dev_frr, "dev_rows": len(dev),
            "dev_entropy_mean": sum(entropies) / len(entropies), "steps": 0, "trainable_params": 0}
