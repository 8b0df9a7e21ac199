"""`rap` (Robustness-Aware Perturbation, Yang et al., 2021): an input filter. A rare word (`cf`) is put in
front of every input, and only its word embedding is trained, on clean rows, so that it lowers the
model's probability of the predicted label of a clean input by between `drop_min` and `drop_max`. A
backdoored input is held by its trigger and barely moves: inputs whose probability drops by less than a
threshold are rejected. The threshold is the drop quantile of clean dev rows at the stated
false-rejection rate. The model's weights never change: the trained embedding is applied by a hook on
the input embeddings, only while the perturbed copies are classified.

The paper protects one label the defender names; `protect_label: null` (the default) protects every
label, since a defender who does not know the attack does not know its target either. Inputs predicted
as an unprotected label are let through.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from w2sdefense.config import check_positive, to_dict
from w2sdefense.data.records import Example
from w2sdefense.defenses.base import DefenseJob, register_defense
from w2sdefense.defenses.filtering import calibration_rows, frr_threshold, write_filter
from w2sdefense.eval.filtering import Screened
from w2sdefense.errors import UserError, shown
from w2sdefense.models import Classifier, load_classifier
from w2sdefense.models.batching import encode, make_loader, model_inputs
from w2sdefense.models.predict import classify_rows
from w2sdefense.runtime import Runtime


@dataclass(frozen=True)
class RapSettings:
    word: str = "cf"  # the perturbation word put in front of each input
    protect_label: int | None = None  # the label whose inputs are screened; None = every label
    drop_min: float = 0.1  # a clean input's probability should drop by at least this ...
    drop_max: float = 0.3  # ... and at most this
    frr: float = 0.05  # false-rejection rate on clean dev rows that sets the threshold
    rows: int = 500  # clean training rows the embedding is trained on
    epochs: int = 5
    lr: float = 1e-2
    batch_size: int = 32
    max_length: int = 128

    def __post_init__(self) -> None:
        for name in ("rows", "epochs", "lr", "batch_size", "max_length"):
            check_positive(f"rap.{name}", getattr(self, name))
        if not 0 <= self.drop_min < self.drop_max <= 1:
            raise UserError(f"rap needs 0 <= drop_min < drop_max <= 1; got {self.drop_min}, {self.drop_max}")
        if not 0 <= self.frr < 1:
            raise UserError(f"rap.frr must be in [0, 1); got {self.frr}")
        if not self.word.strip() or len(self.word.split()) != 1:
            raise UserError(f"rap.word must be one word; got {shown(self.word)}")


def word_slots(tokenizer, word: str) -> tuple[int, list[int]]:
    """Where the word's tokens sit when it opens a text: (first position, the word's token ids)."""
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(f"{word} placeholder")["input_ids"]
    for start in range(min(3, len(text_ids))):  # after the special tokens in front (BOS, [CLS])
        if word_ids and text_ids[start:start + len(word_ids)] == word_ids:
            return start, word_ids
    raise UserError(f"rap.word {shown(word)} is not tokenised the same at the start of a text; choose another word")


@contextlib.contextmanager
def perturbed(model: torch.nn.Module, vectors: torch.Tensor, start: int) -> Iterator[None]:
    """While inside, the input embeddings at positions start..start+len(vectors) are `vectors`."""
    stop = start + vectors.shape[0]

    def hook(module, args, output):
        head = vectors.to(device=output.device, dtype=output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :start], head, output[:, stop:]], dim=1)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def with_word(word: str, texts: list[str]) -> list[Example]:
    return [Example(text=f"{word} {t}", label=0, idx=i) for i, t in enumerate(texts)]


class RapFilter:
    test_rows = 0  # cheap enough for the whole test set

    def __init__(self, settings: RapSettings, vectors: torch.Tensor, start: int, threshold: float | None = None):
        self.settings, self.vectors, self.start, self.threshold = settings, vectors, start, threshold

    def probabilities(self, clf: Classifier, texts: list[str], rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax of the plain inputs and of their perturbed copies, [N, K] each."""
        s = self.settings
        plain = [Example(text=t, label=0, idx=i) for i, t in enumerate(texts)]
        clean = classify_rows(clf, plain, s.max_length, s.batch_size, rt, "rap")
        with perturbed(clf.model, self.vectors, self.start):
            rap = classify_rows(clf, with_word(s.word, texts), s.max_length, s.batch_size, rt, "rap perturbed")
        return clean.softmax(-1), rap.softmax(-1)

    def drops(self, clf: Classifier, texts: list[str], rt: Runtime) -> tuple[list[float], list[bool]]:
        """Per input: how much the perturbation lowers the predicted label's probability; whether screened."""
        if not texts:
            return [], []
        clean, rap = self.probabilities(clf, texts, rt)
        pred = clean.argmax(-1)
        rows = torch.arange(len(texts))
        drop = (clean[rows, pred] - rap[rows, pred]).tolist()
        protected = self.settings.protect_label
        screened = [protected is None or p == protected for p in pred.tolist()]
        return drop, screened

    def screen(self, clf: Classifier, texts: list[str], rt: Runtime) -> Screened:
        drop, screened = self.drops(clf, texts, rt)
        rejected = [self.threshold is not None and s and d < self.threshold for d, s in zip(drop, screened)]
        return Screened(list(texts), rejected, drop)

    def state(self) -> dict:
        return {"threshold": self.threshold, "start": self.start, "vectors": self.vectors.tolist()}


def _load(settings: RapSettings, state: dict) -> RapFilter:
    return RapFilter(settings, torch.tensor(state["vectors"]), state["start"], state["threshold"])


def rap_objective(drop: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Zero when every drop lies in [low, high]; grows linearly outside it."""
    return (torch.relu(low - drop) + torch.relu(drop - high)).mean()


def train_perturbation(clf: Classifier, rows: list[Example], settings: RapSettings, seed: int,
                       rt: Runtime) -> tuple[torch.Tensor, int, list[float], int]:
    """Train the word's embedding (nothing else) on `rows`: it, its position, the loss per epoch, the steps."""
    model = clf.model.to(rt.device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    start, ids = word_slots(clf.tokenizer, settings.word)
    vectors = model.get_input_embeddings().weight[ids].detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([vectors], lr=settings.lr)
    pad = clf.tokenizer.pad_token_id
    texts = [e.text for e in rows]
    clean = classify_rows(clf, rows, settings.max_length, settings.batch_size, rt, "rap clean").softmax(-1)
    pred = clean.argmax(-1)
    keep = [i for i, p in enumerate(pred.tolist()) if settings.protect_label is None or p == settings.protect_label]
    if not keep:
        raise UserError(f"rap: no clean training row is predicted as label {settings.protect_label}")
    encoded = encode(clf.tokenizer, with_word(settings.word, [texts[i] for i in keep]), settings.max_length)
    target_prob = clean[keep, pred[keep]]
    rng = random.Random(seed)
    losses, steps = [], 0
    for _ in range(settings.epochs):
        order = list(range(len(keep)))
        rng.shuffle(order)
        batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        total = 0.0
        with perturbed(model, vectors, start):
            for batch in make_loader(encoded, batches, pad):
                pos = batch["position"]
                inputs = {k: v.to(rt.device) for k, v in model_inputs(batch).items()}
                probs = model(**inputs).logits.float().softmax(-1)
                now = probs[torch.arange(len(pos)), pred[keep][pos].to(rt.device)]
                loss = rap_objective(target_prob[pos].to(rt.device) - now, settings.drop_min, settings.drop_max)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                total += loss.item() * len(pos)
        losses.append(total / len(keep))
    return vectors.detach().cpu(), start, losses, steps


@register_defense("rap", kind="input-filter", method=None, settings=RapSettings, load_filter=_load)
def rap(job: DefenseJob) -> dict:
    """Reject inputs whose prediction a trained perturbation word barely moves (backdoored ones hold)."""
    settings = job.settings
    dev = calibration_rows(job, "rap")
    clf = load_classifier(job.student, job.splits.num_labels, job.rt.dtype)
    torch.manual_seed(job.seed)
    vectors, start, losses, steps = train_perturbation(clf, job.splits.train[: settings.rows], settings, job.seed, job.rt)
    flt = RapFilter(settings, vectors, start)
    drop, screened = flt.drops(clf, [e.text for e in dev], job.rt)
    calib = [d for d, s in zip(drop, screened) if s]
    if len(calib) < 2:
        raise UserError("rap: fewer than 2 clean dev rows are predicted as a protected label")
    flt.threshold, rejected = frr_threshold(calib, settings.frr)  # about frr of screened clean rows fall under it
    write_filter(job.out_dir, "rap", job.student, to_dict(settings), flt, job.rt, job.seed)
    return {"threshold": flt.threshold, "dev_false_rejection_rate": rejected / len(dev), "dev_rows": len(dev),
            "dev_drop_mean": sum(calib) / len(calib), "rap_loss_per_epoch": losses, "steps": steps,
            "trainable_params": int(vectors.numel())}
