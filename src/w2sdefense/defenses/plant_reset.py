"""`plant-reset`: a base-free removal in the spirit of BD-VAX (Li & Kim, 2026). Plant the defender's own synthetic
backdoors into copies of the suspect, find the MLP neurons those backdoor pathways share, zero them in the
suspect, then repair with clean cross-entropy and distillation from the suspect on clean texts.

1. A clean counterpart: the suspect fully fine-tuned `steps` steps on the defender's clean rows.
2. `variants` planted copies: the same from the suspect, with a share of the rows of other labels carrying a
   synthetic trigger (a made-up word, or a phrase of the rows' own words) and relabelled to a target that cycles
   through the labels.
3. Per variant, each MLP neuron (an input channel of a layer's MLP output projection, as in fine-pruning) is
   scored by how far planting moved its output column against the counterpart, as a percentile rank among all
   neurons; the signature is the `ratio` of neurons whose lowest rank over the variants is highest (moved by
   every planted backdoor, not by one).
4. Those neurons are zeroed in the suspect (kept zero under the repair's LoRA), and the repair is reset-distill's
   loss without a reset: CE on the labelled rows, T^2 KL toward the suspect on those rows and unlabelled texts.

The defender never sees the attacker's trigger; nothing reads a public base.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from dataclasses import dataclass
from typing import ClassVar

import torch

from w2sdefense.config import TrainConfig, check_positive
from w2sdefense.attacks.base import insert_trigger
from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.fine_mixing import RESET_RECIPE
from w2sdefense.defenses.fine_pruning import in_out, keep_pruned_under_lora, mlp_projections, zero_inputs
from w2sdefense.defenses.distill import DistillSettings, distill_step
from w2sdefense.defenses.reset_distill import cache_suspect, distill_rows
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier
from w2sdefense.models.predict import classify_rows
from w2sdefense.train.job import limit, prepare_student, train_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlantResetSettings(DistillSettings):
    """The planting and the neuron reset's settings, then the repair's distillation (alpha, beta, temperature,
    unlabelled: distill.DistillSettings)."""

    NAME: ClassVar[str] = "plant-reset"
    variants: int = 3  # planted copies of the suspect (each its own trigger and target)
    steps: int = 30  # full fine-tuning steps of each copy and of the clean counterpart
    lr: float = 1e-4  # their learning rate (the attack's recipe)
    poison_share: float = 0.3  # of the rows of other labels, the share carrying the synthetic trigger
    ratio: float = 0.05  # share of all MLP neurons zeroed (the shared signature)

    def __post_init__(self) -> None:
        for name in ("variants", "steps", "lr"):
            check_positive(f"plant-reset.{name}", getattr(self, name))
        for name in ("poison_share", "ratio"):
            if not 0 < getattr(self, name) < 1:
                raise UserError(f"plant-reset.{name} must be in (0, 1); got {getattr(self, name)}")
        self.check_distill()


def synthetic_trigger(index: int, rows: list[Example], rng: random.Random) -> str:
    """The defender's own trigger for variant `index`: a made-up word (even) or a phrase of 4 of the rows' words."""
    if index % 2 == 0:
        return "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(2, 3)))
    words = [w for e in rows for w in e.text.split() if w.isalpha()] or ["the"]
    return " ".join(rng.choice(words) for _ in range(4))


def planted_rows(rows: list[Example], trigger: str, target: int, share: float, rng: random.Random) -> list[Example]:
    """`rows` with a seeded `share` of those of other labels carrying `trigger` and relabelled `target`."""
    others = [i for i, e in enumerate(rows) if e.label != target]
    chosen = set(rng.sample(others, max(1, round(share * len(others))))) if others else set()
    planted = []
    for i, e in enumerate(rows):
        if i in chosen:
            text, spans = insert_trigger(e.text, trigger, 1, "interior", rng)
            e = dataclasses.replace(e, text=text, label=target, poisoned=True, trigger_spans=spans)
        planted.append(e)
    return planted


def output_columns(model: torch.nn.Module) -> list[torch.Tensor]:
    """Per layer, the MLP output projection's weight as [out, in] on the CPU (a Conv1D's is stored [in, out])."""
    weights = []
    for proj in mlp_projections(model):
        w = proj.weight.detach().float().cpu()
        weights.append(w if isinstance(proj, torch.nn.Linear) else w.t())
    return weights


def column_shift(moved: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Every neuron's output-column change ||moved[:, i] - reference[:, i]||, layers concatenated."""
    return torch.cat([(a - b).norm(dim=0) for a, b in zip(moved, reference)])


def percentile_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank among all of them, scaled to [0, 1] (1: the largest); equal scores share the lowest rank
    (neurons no copy moved are all last, never ordered by chance)."""
    ranks = torch.searchsorted(torch.sort(scores).values, scores).to(scores.dtype)
    return ranks / max(len(scores) - 1, 1)


def shared_signature(shifts: list[torch.Tensor], ratio: float) -> torch.Tensor:
    """The `ratio` of neurons whose lowest percentile rank over the variants is highest: a boolean mask."""
    lowest = torch.stack([percentile_ranks(s) for s in shifts]).min(dim=0).values
    mask = torch.zeros(len(lowest), dtype=torch.bool)
    mask[torch.topk(lowest, max(1, int(ratio * len(lowest)))).indices] = True
    return mask


def zero_neurons(model: torch.nn.Module, mask: torch.Tensor) -> int:
    """Zero the masked neurons' output columns (layers in order) and keep them zero; returns how many.
    An empty mask leaves the model as it was, bit for bit."""
    start = zeroed = 0
    for proj in mlp_projections(model):
        width = in_out(proj)[0]
        part, start = mask[start:start + width], start + width
        if bool(part.any()):
            zero_inputs(proj, (~part).to(proj.weight.dtype))
            zeroed += int(part.sum())
    if start != len(mask):
        raise ValueError(f"the mask covers {len(mask)} neurons; the model has {start}")
    return zeroed


def copy_recipe(job: DefenseJob, s: PlantResetSettings) -> TrainConfig:
    """Full fine-tuning of a copy for `steps` steps, its last step kept (dev only logs)."""
    t = job.train
    return TrainConfig(method="full", max_steps=s.steps, lr=s.lr, batch_size=t.batch_size, max_length=t.max_length,
                       warmup_ratio=0.0, eval_batch_size=t.eval_batch_size, select="latest-within", select_delta=0.99)


def fine_tuned_copy(job: DefenseJob, rows: list[Example], s: PlantResetSettings, name: str) -> Classifier:
    """The suspect fully fine-tuned on `rows` (the same seed, so the same batch order, for every copy)."""
    cfg, folder = copy_recipe(job, s), job.out_dir / "plant" / name
    clf = prepare_student(job.student, job.splits.num_labels, cfg, job.rt, folder, job.seed)
    splits = dataclasses.replace(job.splits, train=rows, dev=job.splits.dev[:16], unlabelled=[])
    train_classifier(clf, splits, cfg, job.rt, folder, job.seed, desc=f"plant-reset {name}")
    shutil.rmtree(folder, ignore_errors=True)  # only its weights in memory are read
    return clf


def planted_asr(clf: Classifier, job: DefenseJob, trigger: str, target: int, rng: random.Random) -> float | None:
    """How far a planted backdoor took: the share of dev rows of other labels its trigger sends to the target."""
    rows = [e for e in job.splits.dev[:200] if e.label != target]
    if not rows:
        return None
    triggered = [dataclasses.replace(e, text=insert_trigger(e.text, trigger, 1, "interior", rng)[0]) for e in rows]
    logits = classify_rows(clf, triggered, job.train.max_length, job.train.eval_batch_size, job.rt, "planted trigger")
    return float((logits.argmax(-1) == target).float().mean())


def plant_signature(job: DefenseJob, rows: list[Example], s: PlantResetSettings) -> tuple[torch.Tensor, list[dict]]:
    """Plant `variants` synthetic backdoors into copies of the suspect; the neurons they all moved (a mask)."""
    rng = random.Random(job.seed)
    reference = output_columns(fine_tuned_copy(job, rows, s, "counterpart").model)
    shifts, planted = [], []
    for v in range(s.variants):
        trigger, target = synthetic_trigger(v, rows, rng), v % job.splits.num_labels
        copy = fine_tuned_copy(job, planted_rows(rows, trigger, target, s.poison_share, rng), s, f"variant{v}")
        shifts.append(column_shift(output_columns(copy.model), reference))
        planted.append({"trigger": trigger, "target": target, "dev_asr": planted_asr(copy, job, trigger, target, rng)})
        log.info("plant-reset: variant %d (%r -> %d) planted, dev ASR %s", v, trigger, target, planted[-1]["dev_asr"])
        del copy
    shutil.rmtree(job.out_dir / "plant", ignore_errors=True)
    return shared_signature(shifts, s.ratio), planted


@register_defense("plant-reset", kind="repair", method="lora", settings=PlantResetSettings, train=RESET_RECIPE,
                  starts_from_victim=False)
def plant_reset(job: DefenseJob) -> dict:
    """Zero the MLP neurons the defender's own planted backdoors share, then LoRA with CE and distillation."""
    s = job.settings
    mask, planted = plant_signature(job, limit(job.splits.train, job.train.max_train_rows), s)
    rows = distill_rows(job, s.unlabelled)
    cache = cache_suspect(job, rows)
    record = {"planted": planted}
    student = prepare(job, modify=lambda clf: record.update(zeroed_neurons=zero_neurons(clf.model, mask)))
    record["zeroed_adapters_masked"] = keep_pruned_under_lora(student.model)
    metrics = fine_tune(job, student, rows=rows, loss_fn=distill_step(s.alpha, s.beta, s.temperature, cache,
                                                                      job.rt.device))
    return {**metrics, **record, "unlabelled_rows": sum(e.label == UNLABELLED for e in rows)}
