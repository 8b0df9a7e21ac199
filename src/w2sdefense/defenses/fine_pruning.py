"""`fine-pruning` (Liu et al., 2018): prune the MLP neurons of the last layers that are least active on
clean data (a backdoor tends to live in neurons clean inputs leave dormant), then fine-tune on clean data,
with LoRA (default: the same recipe as lora-ft) or every weight (`train.method: full`).

A neuron is an input channel of a layer's MLP output projection (Llama's `down_proj`, BERT's
`output.dense`); its activity is the mean absolute value of that input over the clean rows' real tokens.
Pruning zeroes its column of the projection, and a gradient mask keeps it zero under full fine-tuning; under
LoRA, an adapter on that projection gets the same columns of its A matrix zeroed and masked, so that LoRA on every
linear layer cannot revive the pruned neurons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers.pytorch_utils import Conv1D

from w2sdefense.config import check_positive
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.errors import UserError
from w2sdefense.models import Classifier
from w2sdefense.models.batching import encode
from w2sdefense.models.predict import run_inference
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinePruningSettings:
    ratio: float = 0.2  # share of each pruned layer's MLP neurons removed
    layers: int = 2  # the last N transformer layers are pruned
    rows: int = 256  # clean training rows whose activations rank the neurons
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise UserError(f"fine-pruning.ratio must be in (0, 1); got {self.ratio}")
        for name in ("layers", "rows", "batch_size"):
            check_positive(f"fine-pruning.{name}", getattr(self, name))


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of transformer layers (the ModuleList as long as config.num_hidden_layers)."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    raise UserError(f"fine-pruning found no stack of {count} transformer layers in {type(model).__name__}")


def in_out(module: torch.nn.Module) -> tuple[int, int] | None:
    """(input, output) width of a linear map: nn.Linear, or GPT-2's Conv1D (its weight is [in, out])."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    return None


def mlp_output(layer: torch.nn.Module, hidden: int) -> torch.nn.Module:
    """A layer's MLP output projection: the linear map from the intermediate width down to the hidden size."""
    found = [m for m in layer.modules() if (io := in_out(m)) and io[1] == hidden and io[0] > hidden]
    if len(found) != 1:
        raise UserError(f"fine-pruning needs one MLP output projection per layer; found {len(found)} in "
                        f"{type(layer).__name__}")
    return found[0]


def mlp_projections(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every layer's MLP output projection, in layer order (its input channels are the layer's neurons)."""
    hidden = model.config.get_text_config().hidden_size
    return [mlp_output(layer, hidden) for layer in transformer_layers(model)]


def neuron_activity(clf: Classifier, projections: list[torch.nn.Module], rows: list, max_length: int,
                    batch_size: int, rt: Runtime) -> list[torch.Tensor]:
    """Per projection, the mean |input| of each input channel over the real tokens of `rows` (Examples)."""
    sums = [torch.zeros(in_out(p)[0]) for p in projections]
    count = [0]
    mask_now = {}

    def hook(i):
        def record(module, args):
            mask = mask_now["mask"]
            x = args[0].float().abs().reshape(*mask.shape[:2], -1)  # OPT feeds its MLP [batch * length, width]
            x = x * mask
            sums[i].add_(x.sum(dim=(0, 1)).cpu())
        return record

    def forward(inputs: dict, positions: torch.Tensor) -> None:
        mask_now["mask"] = inputs["attention_mask"].unsqueeze(-1).float()
        count[0] += int(inputs["attention_mask"].sum())
        clf.model(**inputs)

    handles = [p.register_forward_pre_hook(hook(i)) for i, p in enumerate(projections)]
    try:
        run_inference(clf.model, encode(clf.tokenizer, rows, max_length), clf.tokenizer.pad_token_id, batch_size, rt,
                      forward)
    finally:
        for handle in handles:
            handle.remove()
    return [s / max(count[0], 1) for s in sums]


def prune(clf: Classifier, settings: FinePruningSettings, rows: list, max_length: int, rt: Runtime) -> dict:
    """Zero the least active MLP neurons of the last layers in place; returns what was pruned."""
    projections = mlp_projections(clf.model)[-settings.layers:]
    activity = neuron_activity(clf, projections, rows, max_length, settings.batch_size, rt)
    pruned = []
    for proj, act in zip(projections, activity):
        width = in_out(proj)[0]
        k = int(settings.ratio * width)
        idx = torch.argsort(act)[:k]  # the most dormant on clean data
        keep = torch.ones(width, dtype=proj.weight.dtype)
        keep[idx] = 0
        zero_inputs(proj, keep)
        pruned.append(k)
    log.info("fine-pruning: %s neurons pruned in the last %d layers", pruned, len(projections))
    return {"pruned_neurons": pruned, "pruned_layers": len(projections)}


def zero_inputs(proj: torch.nn.Module, keep: torch.Tensor) -> None:
    """Zero the input channels of a projection where `keep` is 0, and keep them zero under training."""
    # The input channels are the columns of a Linear's weight, the rows of a Conv1D's.
    shaped = keep if isinstance(proj, torch.nn.Linear) else keep[:, None]
    with torch.no_grad():
        proj.weight.mul_(shaped.to(proj.weight.device))
    # Full fine-tuning must not revive them: their gradient is masked too (a hook stays on the
    # tensor whatever its requires_grad later becomes).
    frozen = not proj.weight.requires_grad
    proj.weight.requires_grad_(True)
    proj.weight.register_hook(lambda grad, shaped=shaped: grad * shaped.to(grad.device))
    proj.weight.requires_grad_(not frozen)
    proj.w2s_prune_keep = keep  # for keep_pruned_under_lora, once an adapter wraps the projection


def keep_pruned_under_lora(model: torch.nn.Module) -> int:
    """A LoRA adapter on a pruned projection would revive its neurons through its own path (B @ A x): zero the
    pruned input channels of A and mask their gradient too. Returns how many adapters were masked."""
    masked = 0
    for module in model.modules():
        keep = getattr(getattr(module, "base_layer", None), "w2s_prune_keep", None)
        if keep is None or not hasattr(module, "lora_A"):
            continue
        for adapter in module.lora_A.values():
            mask = keep.to(adapter.weight.device, adapter.weight.dtype)
            with torch.no_grad():
                adapter.weight.mul_(mask)
            adapter.weight.register_hook(lambda grad, mask=mask: grad * mask)
            masked += 1
    return masked


@register_defense("fine-pruning", kind="repair", method="any", settings=FinePruningSettings, train=LORA_RECIPE,
                  starts_from_victim=False)
def fine_pruning(job: DefenseJob) -> dict:
    """Prune the MLP neurons clean data leaves dormant in the last layers, then fine-tune on clean data."""
    settings, train = job.settings, job.train
    rows = limit(job.splits.train, settings.rows)
    record = {}
    student = prepare(job, modify=lambda clf: record.update(prune(clf, settings, rows, train.max_length, job.rt)))
    if train.method == "lora":
        record["pruned_adapters_masked"] = keep_pruned_under_lora(student.model)
    metrics = fine_tune(job, student)
    metrics.update(record)
    return metrics
