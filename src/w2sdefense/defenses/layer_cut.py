"""`layer-cut`: a base-free repair that keeps only the suspect's lower layers. A backdoor's trigger -> target
mapping can be written in the top of the stack while the clean task is already readable lower down (measured on the
realistic BadNet suspect: benchmarks/studies/realistic, "Layer probe"). The cut is chosen on clean data alone:

1. At every layer, a logistic head is fitted on the last token's hidden state of the defender's labelled rows
   (standardised features, its L2 strength picked on the dev rows); its dev accuracy is that layer's.
2. The cut is the lowest layer whose dev accuracy is within `tolerance` of the suspect's own on the same dev rows
   (or `layer`, when given): the layers above it are dropped (config.num_hidden_layers follows), and the
   classification head is re-initialised (`head: fresh`) or kept (`suspect`).
3. The cut model is repaired as reset-distill's is: LoRA with CE on the labelled rows and T^2 KL toward the
   suspect's outputs on them and the unlabelled texts (the trigger never appears there).

The saved model is a plain, shorter checkpoint of the suspect's family. Nothing reads a public base or the trigger;
a trigger whose pathway reaches below every layer that keeps the accuracy (a sentence trigger, on the same
benchmark) is not removed, and the benchmark's row says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from w2sdefense.config import check_choice, check_positive
from w2sdefense.data.records import UNLABELLED, Example
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.distill import DistillSettings, classifier_logits, distill_step
from w2sdefense.defenses.fine_mixing import RESET_RECIPE
from w2sdefense.defenses.reset_distill import distill_rows
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier, load_classifier
from w2sdefense.models.batching import encode, make_loader, file_order_batches
from w2sdefense.models.features import best_probe, last_token_index
from w2sdefense.models.reset import HEADS, reinit_head
from w2sdefense.train.job import limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerCutSettings(DistillSettings):
    """Where to cut and the head, then the repair's distillation (alpha, beta, temperature, unlabelled)."""

    NAME: ClassVar[str] = "layer-cut"
    tolerance: float = 0.01  # the cut: the lowest layer whose probe's dev accuracy is this close to the suspect's
    layer: int | None = None  # cut after this layer (1-based) instead of choosing
    head: str = "fresh"  # fresh: a new classification head | suspect: keep the suspect's
    dev_rows: int = 400  # dev rows the probes and the suspect are compared on

    def __post_init__(self) -> None:
        self.check_distill()
        check_positive("layer-cut.tolerance", self.tolerance, allow_zero=True)
        check_positive("layer-cut.dev_rows", self.dev_rows)
        if self.layer is not None:
            check_positive("layer-cut.layer", self.layer)
        check_choice("layer-cut.head", self.head, HEADS)


def layer_stack(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(parent, attribute, ModuleList) of the model's transformer layers: the list as long as num_hidden_layers."""
    count = model.config.get_text_config().num_hidden_layers
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == count:
                return parent, name, child
    raise UserError(f"layer-cut found no stack of {count} transformer layers in {type(model).__name__}")


def cut_layers(model: torch.nn.Module, keep: int) -> int:
    """Drop every transformer layer above the first `keep`, in place; the config follows. Returns the count before."""
    parent, name, layers = layer_stack(model)
    if not 1 <= keep <= len(layers):
        raise UserError(f"layer-cut.layer={keep}: the model has layers 1..{len(layers)}")
    setattr(parent, name, torch.nn.ModuleList(list(layers)[:keep]))
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.num_hidden_layers = keep
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:keep]
    return len(layers)


def hidden_states(clf: Classifier, rows: list[Example], max_length: int, batch_size: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, rows, hidden) last-token hidden states after each layer, and the model's own logits."""
    encoded = encode(clf.tokenizer, rows, max_length)
    loader = make_loader(encoded, file_order_batches(len(rows), batch_size), clf.tokenizer.pad_token_id)
    states, logits = [], []
    clf.model.eval()
    for batch in loader:
        with torch.no_grad():
            out = clf.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                            output_hidden_states=True)
        at = last_token_index(batch["attention_mask"].to(device))
        states.append(torch.stack([h[torch.arange(len(at)), at] for h in out.hidden_states[1:]]).float().cpu())
        logits.append(out.logits.float().cpu())
    return torch.cat(states, 1), torch.cat(logits)


def probe_accuracy(train: torch.Tensor, y: torch.Tensor, dev: torch.Tensor, dev_y: torch.Tensor,
                   num_labels: int) -> float:
    """The dev accuracy of the best-on-dev logistic head fitted on one layer's features."""
    return best_probe(train, y, dev, dev_y, num_labels)[0]


def choose_cut(job: DefenseJob, s: LayerCutSettings, clf: Classifier) -> dict:
    """The layer to cut after: probes per layer on the defender's labelled rows, compared on dev with the suspect."""
    rows, dev = limit(job.splits.train, job.train.max_train_rows), job.splits.dev[:s.dev_rows]
    args = (job.train.max_length, job.train.eval_batch_size, job.rt.device)
    (train_h, _), (dev_h, dev_logits) = hidden_states(clf, rows, *args), hidden_states(clf, dev, *args)
    y, dev_y = torch.tensor([e.label for e in rows]), torch.tensor([e.label for e in dev])
    suspect = float((dev_logits.argmax(-1) == dev_y).float().mean())
    accuracy = [probe_accuracy(train_h[i], y, dev_h[i], dev_y, job.splits.num_labels) for i in range(len(train_h))]
    within = [i + 1 for i, a in enumerate(accuracy) if a >= suspect - s.tolerance]
    layer = s.layer or (within[0] if within else len(accuracy))
    log.info("layer-cut: suspect dev accuracy %.3f; cut after layer %d of %d (its probe: %.3f)", suspect, layer,
             len(accuracy), accuracy[layer - 1])
    return {"cut_layer": layer, "layers": len(accuracy), "suspect_dev_accuracy": suspect,
            "probe_dev_accuracy": [round(a, 4) for a in accuracy]}


@register_defense("layer-cut", kind="repair", method="lora", settings=LayerCutSettings, train=RESET_RECIPE,
                  starts_from_victim=False)
def layer_cut(job: DefenseJob) -> dict:
    """Keep the suspect's lower layers (the cut chosen on clean dev rows), then LoRA with CE and distillation."""
    s = job.settings
    rows = distill_rows(job, s.unlabelled)
    suspect = load_classifier(job.student, job.splits.num_labels, job.rt.dtype)  # loaded once: probes and targets
    suspect.model.to(job.rt.device)
    record = choose_cut(job, s, suspect)
    cache = classifier_logits(suspect, rows, job.train.max_length, job.train.eval_batch_size, job.rt)
    del suspect

    def modify(clf: Classifier) -> None:
        cut_layers(clf.model, record["cut_layer"])
        if s.head == "fresh":
            reinit_head(clf.model, torch.Generator().manual_seed(job.seed))

    student = prepare(job, modify=modify)
    metrics = fine_tune(job, student, rows=rows, loss_fn=distill_step(s.alpha, s.beta, s.temperature, cache,
                                                                      job.rt.device))
    return {**metrics, **record, "unlabelled_rows": sum(e.label == UNLABELLED for e in rows)}
