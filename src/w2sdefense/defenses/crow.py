"""`crow` (Min et al., ICML 2025): LoRA fine-tuning on clean data with an internal-consistency term on
adversarially perturbed input embeddings, a trigger-free LLM-era baseline.

    loss = CE(clean) + weight * consistency(embeddings + epsilon * sign(grad_emb consistency))

The perturbation (one FGSM step on the input embeddings, added by a forward hook so the model still
pools from its input ids) looks for the direction in which the layers' hidden states stop agreeing;
the term asks adjacent layers to agree there too. weight 0 is lora-ft exactly; epsilon 0 drops the
perturbation. The defaults are the authors' code's (alpha 5.5, epsilon 0.1).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from w2sdefense.config import check_positive
from w2sdefense.defenses.base import DefenseJob, fine_tune, prepare, register_defense
from w2sdefense.defenses.losses import layer_consistency
from w2sdefense.defenses.recipes import LORA_RECIPE
from w2sdefense.models.batching import model_inputs
from w2sdefense.train.loop import LossFn, StepOutput, cross_entropy_step


@dataclass(frozen=True)
class CrowSettings:
    epsilon: float = 0.1  # the FGSM step on the input embeddings (0: no perturbation)
    weight: float = 5.5  # weight of the consistency term (0: lora-ft)

    def __post_init__(self) -> None:
        check_positive("crow.epsilon", self.epsilon, allow_zero=True)
        check_positive("crow.weight", self.weight, allow_zero=True)


@contextlib.contextmanager
def embeddings_plus(model: torch.nn.Module, delta):
    """Add `delta(output)` to the input embeddings' output during the block (on the model inside a DDP
    wrapper, which does not pass attributes through; the forward still goes through the wrapper)."""
    inner = extract_model_from_parallel(model)
    handle = inner.get_input_embeddings().register_forward_hook(lambda module, args, output: output + delta(output))
    try:
        yield
    finally:
        handle.remove()


def crow_loss(settings: CrowSettings) -> LossFn:
    """CROW's step loss (see the module docstring)."""
    if settings.weight == 0:
        return cross_entropy_step

    def step(model: torch.nn.Module, batch: dict) -> StepOutput:
        inputs, mask = model_inputs(batch), batch["attention_mask"]
        if settings.epsilon > 0:
            probe = {}

            def zero_leaf(output):
                probe["delta"] = torch.zeros_like(output, requires_grad=True)
                return probe["delta"]

            with embeddings_plus(model, zero_leaf):
                out = model(**inputs, output_hidden_states=True)
            clean = layer_consistency(out.hidden_states, mask)
            (grad,) = torch.autograd.grad(clean, probe["delta"], retain_graph=True)
            push = (settings.epsilon * grad.sign()).detach()
            with embeddings_plus(model, lambda output: push.to(output.dtype)):
                adversarial = layer_consistency(model(**inputs, output_hidden_states=True).hidden_states, mask)
        else:
            out = model(**inputs, output_hidden_states=True)
            adversarial = clean = layer_consistency(out.hidden_states, mask)
        ce = F.cross_entropy(out.logits.float(), batch["labels"])
        total = ce + settings.weight * adversarial
        return StepOutput(total, {"loss": total.item(), "ce": ce.item(), "consistency": clean.item(),
                                  "consistency_adv": adversarial.item()})

    return step


@register_defense("crow", kind="repair", method="lora", settings=CrowSettings, train=LORA_RECIPE)
def crow(job: DefenseJob) -> dict:
    """LoRA on clean data with layer consistency under an FGSM perturbation of the input embeddings."""
    return fine_tune(job, prepare(job), loss_fn=crow_loss(job.settings))
