"""`latent-adversarial`: a base-free removal that needs neither the trigger nor the target label. A backdoor is a
shortcut (Neural Cleanse's intuition): a small, input-independent shift of the hidden state sends any row to the
target label. Find that shift in the suspect's residual stream, then teach the model to answer correctly under it
(latent adversarial unlearning, in the spirit of BEEAR, Zeng et al. 2024, and targeted latent adversarial
training, Sheshadri et al. 2024).

1. Probe (the suspect as it is): per label c, one vector delta_c, added to the residual stream after the layer at
   `depth` of the stack, at every position of the rows whose label is not c, moved by `probe_steps` normalised
   gradient steps toward sending them to c, its norm at most `epsilon` times the median token norm there. The
   label whose vector flips the largest share of the defender's rows is the suspected target (`target` sets it).
2. Repair (LoRA, reset-distill's loss without a reset): CE on the labelled rows, beta T^2 KL toward the suspect on
   every row, and `adv` times the CE of the true label (the suspect's answer for an unlabelled text) on the rows
   of other labels with delta_target added. delta_target keeps ascending that loss, one normalised step per
   training step from the same backward (no extra pass), so it follows the shortcut as the repair closes it.

The defender's rows never carry the trigger; nothing reads a public base. A resumed run restarts delta from the
probe (it is not part of the checkpoint).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from w2sdefense.config import check_positive
from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.distill import DistillSettings, SuspectLogits, distill_terms
from w2sdefense.defenses.fine_mixing import RESET_RECIPE
from w2sdefense.defenses.fine_pruning import transformer_layers
from w2sdefense.defenses.reset_distill import cache_suspect, distill_rows
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier
from w2sdefense.models.batching import encode, file_order_batches, make_loader, model_inputs
from w2sdefense.train.job import limit
from w2sdefense.train.loop import LossFn, StepOutput

log = logging.getLogger(__name__)
PROBE_ROWS = 128  # the defender's rows the probe optimises on and measures its flip rates with


@dataclass(frozen=True)
class LatentAdversarialSettings(DistillSettings):
    """The probe's and the adversary's settings, then the repair's distillation (alpha, beta, temperature,
    unlabelled: distill.DistillSettings)."""

    NAME: ClassVar[str] = "latent-adversarial"
    depth: float = 0.5  # where in the layer stack the shift is added: 0 after the first layer, 1 after the last
    epsilon: float = 0.5  # the shift's largest norm, times the median token norm at that layer
    probe_steps: int = 40  # normalised gradient steps of each label's probe
    adv: float = 1.0  # weight of the CE under the shift
    target: int | None = None  # the label to unlearn a shortcut to (None: the probe's pick)

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= 1:
            raise UserError(f"latent-adversarial.depth must be in [0, 1]; got {self.depth}")
        for name in ("epsilon", "probe_steps"):
            check_positive(f"latent-adversarial.{name}", getattr(self, name))
        check_positive("latent-adversarial.adv", self.adv, allow_zero=True)
        if self.target is not None and self.target < 0:
            raise UserError(f"latent-adversarial.target must be a label (>= 0); got {self.target}")
        self.check_distill()


class LatentShift:
    """A forward hook on one transformer layer that adds `shift` ([B, 1, H] or [H]) to its output while set, and
    records the median norm of the real tokens' hidden states there while `measure` is on."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.shift: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # the batch's attention mask, for `measure`
        self.norms: list[torch.Tensor] = []
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self.mask is not None:
            self.norms.append(hidden.detach().float().norm(dim=-1)[self.mask.bool()].cpu())
        if self.shift is None:
            return None
        hidden = hidden + self.shift.to(hidden.device, hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    @contextmanager
    def added(self, shift: torch.Tensor | None) -> Iterator[None]:
        self.shift = shift
        try:
            yield
        finally:
            self.shift = None

    def median_norm(self) -> float:
        return float(torch.cat(self.norms).median()) if self.norms else 0.0


def shift_layer(model: torch.nn.Module, depth: float) -> torch.nn.Module:
    """The transformer layer `depth` of the way up the stack."""
    layers = transformer_layers(model)
    return layers[round(depth * (len(layers) - 1))]


def ascend(delta: torch.Tensor, grad: torch.Tensor, step: float, radius: float) -> None:
    """One normalised gradient step of `delta` (in place, `step` long), then back into the ball of `radius`."""
    with torch.no_grad():
        delta.add_(grad / grad.norm().clamp_min(1e-12), alpha=step)
        norm = delta.norm()
        if norm > radius:
            delta.mul_(radius / norm)


def probe_batches(clf: Classifier, rows: list[Example], max_length: int, batch_size: int, device) -> list[dict]:
    """The probe's rows as padded batches on the device (their order fixed)."""
    encoded = encode(clf.tokenizer, rows, max_length)
    loader = make_loader(encoded, file_order_batches(len(rows), batch_size), clf.tokenizer.pad_token_id)
    return [{k: v.to(device) for k, v in batch.items()} for batch in loader]


def flip_rate(model, hook: LatentShift, batches: list[dict], delta: torch.Tensor, label: int) -> float:
    """The share of the rows of other labels that `delta` sends to `label`."""
    sent = total = 0
    with torch.no_grad():
        for batch in batches:
            other = batch["labels"] != label
            if other.any():
                with hook.added(delta):
                    logits = model(**model_inputs({k: v[other] for k, v in batch.items()})).logits
                sent += int((logits.argmax(-1) == label).sum())
                total += int(other.sum())
    return sent / total if total else 0.0


def probe_label(model, hook: LatentShift, batches: list[dict], label: int, s: LatentAdversarialSettings,
                radius: float) -> torch.Tensor:
    """The shift that best sends the rows of other labels to `label` (normalised steps, norm at most radius)."""
    width = model.config.get_text_config().hidden_size
    delta = torch.zeros(width, device=batches[0]["input_ids"].device, requires_grad=True)
    for step in range(s.probe_steps):
        batch = batches[step % len(batches)]
        other = batch["labels"] != label
        if not other.any():
            continue
        with hook.added(delta):
            logits = model(**model_inputs({k: v[other] for k, v in batch.items()})).logits.float()
        loss = F.cross_entropy(logits, torch.full_like(batch["labels"][other], label))
        (grad,) = torch.autograd.grad(loss, [delta])
        ascend(delta, -grad, radius / 4, radius)
    return delta.detach()


def token_scale(model, hook: LatentShift, batches: list[dict]) -> float:
    """The median norm of the real tokens' hidden states at the hooked layer over the probe's rows."""
    hook.norms = []
    with torch.no_grad():
        for batch in batches:
            hook.mask = batch["attention_mask"]
            model(**model_inputs(batch))
    hook.mask = None
    return hook.median_norm()


def run_probe(clf: Classifier, hook: LatentShift, rows: list[Example], num_labels: int,
              s: LatentAdversarialSettings, job: DefenseJob) -> tuple[int, torch.Tensor, float, dict]:
    """Every label's shift and flip rate on the suspect; the target (the largest flip rate, or s.target), its
    shift, the shift's radius and a record for metrics.json."""
    sample = random.Random(job.seed).sample(rows, min(PROBE_ROWS, len(rows)))
    batches = probe_batches(clf, sample, job.train.max_length, job.train.batch_size, job.rt.device)
    model = clf.model
    was_training = model.training
    model.eval()
    radius = s.epsilon * token_scale(model, hook, batches)
    deltas = {c: probe_label(model, hook, batches, c, s, radius) for c in range(num_labels)}
    rates = {c: flip_rate(model, hook, batches, deltas[c], c) for c in range(num_labels)}
    model.train(was_training)
    target = s.target if s.target is not None else max(rates, key=rates.get)
    log.info("latent-adversarial: flip rates %s, unlearning the shortcut to label %d", rates, target)
    record = {"probe_flip_rates": {str(c): r for c, r in rates.items()}, "probe_target": target,
              "shift_radius": radius}
    return target, deltas[target], radius, record


def adversarial_step(s: LatentAdversarialSettings, hook: LatentShift, delta: torch.Tensor, target: int,
                     radius: float, cache: SuspectLogits, device: torch.device) -> LossFn:
    """The repair's step loss: alpha CE + beta T^2 KL toward the suspect (as reset-distill) + adv CE under the
    shift on the rows of other labels; the shift ascends on the previous step's gradient first."""

    def step(model: torch.nn.Module, batch: dict) -> StepOutput:
        if delta.grad is not None:
            grad = delta.grad
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(grad)  # every process keeps the same shift
            ascend(delta, grad, radius / 8, radius)
            delta.grad = None
        inputs, labels = model_inputs(batch), batch["labels"]
        teacher = cache.of(batch["example_id"].cpu()).to(device)
        logits = model(**inputs).logits.float()
        clean, ce, kd = distill_terms(logits, labels, teacher, s.alpha, s.beta, s.temperature)
        answer = torch.where(labels == UNLABELLED, teacher.argmax(-1), labels)
        other = answer != target
        adv = logits.new_zeros(())
        if s.adv and other.any():
            with hook.added(delta):
                shifted = model(**{k: v[other] for k, v in inputs.items()}).logits.float()
            adv = F.cross_entropy(shifted, answer[other])
        total = clean + s.adv * adv
        return StepOutput(total, {"loss": total.item(), "ce": ce.item(), "kd": kd.item(), "adv": adv.item()})

    return step


@register_defense("latent-adversarial", kind="repair", method="lora", settings=LatentAdversarialSettings,
                  train=RESET_RECIPE)
def latent_adversarial(job: DefenseJob) -> dict:
    """Find the hidden-state shift that sends rows to one label (a backdoor's shortcut), unlearn it with LoRA."""
    s, labels = job.settings, job.splits.num_labels
    if s.target is not None and s.target >= labels:
        raise UserError(f"latent-adversarial.target is {s.target}; the data has labels 0 to {labels - 1}")
    rows = distill_rows(job, s.unlabelled)
    cache = cache_suspect(job, rows)
    student = prepare(job)
    student.model.to(job.rt.device)  # the probe runs where the repair will
    hook = LatentShift(shift_layer(student.model, s.depth))
    try:
        labelled = [e for e in limit(job.splits.train, job.train.max_train_rows) if e.label != UNLABELLED]
        target, delta, radius, record = run_probe(student, hook, labelled, labels, s, job)
        delta.requires_grad_(True)
        loss = adversarial_step(s, hook, delta, target, radius, cache, job.rt.device)
        metrics = fine_tune(job, student, rows=rows, loss_fn=loss)
    finally:
        hook.handle.remove()
    return {**metrics, **record, "unlabelled_rows": sum(e.label == UNLABELLED for e in rows)}
