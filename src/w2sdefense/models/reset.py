"""Weight reset toward a public base model (Fine-mixing, Zhang et al., 2022): keep a share `rho` of what
fine-tuning changed in the backbone and put the rest back to the public weights, without the trigger
ever having to fire. The victim's classification head is kept (the base has none of its own).

    mask:        theta = where(m, theta_victim, theta_base), m ~ Bernoulli(rho) per weight, seeded
    interpolate: theta = theta_base + rho * (theta_victim - theta_base)

rho = 1 is the victim bit for bit, rho = 0 the base's backbone. The backbone is what the model keeps
under `base_model_prefix`: for BERT-class models that includes the pooler the head reads, which is reset
with the rest. A base checkpoint that lacks some backbone weights (transformers fills them at random) is
not detected here.
"""

from __future__ import annotations

import torch
from torch import nn

from w2sdefense.errors import UserError, shown

MIXES = ("mask", "interpolate")


def check_reset(where: str, base_model: str | None, rho: float, mix: str) -> None:
    """The reset settings (fine-mixing's, W2SDefense's reset): a known mix, rho in [0, 1], a named base."""
    if mix not in MIXES:
        raise UserError(f"{where}.mix must be one of {', '.join(MIXES)}; got {shown(mix)}")
    if not 0 <= rho <= 1:
        raise UserError(f"{where}.rho must be in [0, 1] (the share of the fine-tuning change kept); got {rho}")
    if base_model is not None and not str(base_model).strip():
        raise UserError(f"{where}.base_model is empty: give the public model the suspect was fine-tuned from")


def backbone(model: nn.Module) -> nn.Module:
    """The part of a sequence classifier the public base also has (`model.<base_model_prefix>`)."""
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    if not isinstance(inner, nn.Module):
        raise UserError(f"{type(model).__name__} has no backbone under base_model_prefix {prefix!r}: "
                        "a weight reset needs a Hugging Face classifier")
    return inner


def check_same_backbone(victim: nn.Module, base: nn.Module, base_name: str) -> None:
    """The base must have the victim's architecture and every backbone weight's shape."""
    v, b = backbone(victim), backbone(base)
    if type(v) is not type(b):
        raise UserError(f"base_model {base_name!r} is a {type(b).__name__}, the suspect model a {type(v).__name__}: "
                        "give the public model the suspect was fine-tuned from")
    vp, bp = dict(v.named_parameters()), dict(b.named_parameters())
    missing = sorted(set(vp) ^ set(bp))
    shapes = [f"{n} {tuple(vp[n].shape)} vs {tuple(bp[n].shape)}" for n in vp if n in bp and vp[n].shape != bp[n].shape]
    if missing or shapes:
        what = f"weights only one of them has: {', '.join(missing[:3])}" if missing else f"shapes differ: {shapes[0]}"
        raise UserError(f"base_model {base_name!r} does not match the suspect model ({what}"
                        f"{', ...' if len(missing) > 3 or len(shapes) > 1 else ''}): give the public model it was "
                        "fine-tuned from")


def reset_toward_base(victim: nn.Module, base: nn.Module, rho: float, mix: str,
                      generator: torch.Generator) -> dict:
    """Mix the victim's backbone with the base's in place (see the module docstring); returns a record of it."""
    if mix not in MIXES:
        raise UserError(f"mix must be one of {', '.join(MIXES)}; got {shown(mix)}")
    base_params = dict(backbone(base).named_parameters())
    changed = kept = total = 0
    moved = norm = 0.0
    with torch.no_grad():
        for name, param in backbone(victim).named_parameters():
            ref = base_params[name].to(param.device, param.dtype)
            changed += int((param != ref).sum())
            moved += float((param.float() - ref.float()).pow(2).sum())
            norm += float(ref.float().pow(2).sum())
            if mix == "interpolate":
                mixed = torch.lerp(ref, param, rho)  # exact at rho 0 and 1
            else:
                # Drawn on the CPU from the seeded generator: the same mask on any device.
                keep = torch.rand(param.shape, generator=generator) < rho
                kept += int(keep.sum())
                mixed = torch.where(keep.to(param.device), param, ref)
            param.copy_(mixed)
            total += param.numel()
    # How far the suspect is from the base, relative to the base's weights (one number for the whole backbone).
    record = {"reset_mix": mix, "reset_rho": rho, "reset_weights": total, "reset_changed_by_fine_tuning": changed,
              "suspect_base_relative_distance": (moved / norm) ** 0.5 if norm else None}
    if mix == "mask":
        record["reset_kept_share"] = kept / max(total, 1)
    return record


# Beyond this relative distance (backbone weight change over the base's weights) the suspect was hardly fine-tuned
# from this base: fine-tuning moves little, two models pretrained apart differ by about their own size (the
# distances measured: benchmarks/studies/realistic).
FAR_FROM_BASE = 0.1

HEADS = ("suspect", "fresh")
TOKENIZERS = ("suspect", "base")  # the tokenizer the reset model keeps


def reinit_head(model: nn.Module, generator: torch.Generator) -> int:
    """Re-initialise every weight outside the backbone (the classification head, whatever its depth) as a new
    head starts: matrices normal(0, initializer_range), norm weights 1, biases 0. Returns the count."""
    inside = {id(p) for p in backbone(model).parameters()}
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in inside:
                continue
            if param.dim() > 1:
                param.copy_((torch.randn(param.shape, generator=generator) * std).to(param.device, param.dtype))
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            count += param.numel()
    return count


def reset_student(clf, base_name: str, rho: float, mix: str, seed: int, dtype: torch.dtype = torch.float32,
                  head: str = "suspect", tokenizer: str = "suspect") -> dict:
    """Load the public base `base_name` (any name --model takes) and reset the suspect's backbone toward it; `head`
    fresh also re-initialises the suspect's head (the control: what does the suspect contribute?); `tokenizer` base
    also gives it the base's tokenizer (an attacker who expects
    the reset can hide the trigger in the tokenizer the reset keeps: a vocabulary that maps it to other ids). The
    record counts the base's tokens the suspect's tokenizer maps to another id, whichever is kept."""
    if tokenizer not in TOKENIZERS:
        raise UserError(f"tokenizer must be one of {', '.join(TOKENIZERS)}; got {shown(tokenizer)}")
    base = _load_base(base_name, clf.model, dtype)
    record = _reset(clf.model, base.model, base_name, rho, mix, seed, head)
    ours, theirs = clf.tokenizer.get_vocab(), base.tokenizer.get_vocab()
    record["reset_tokens_remapped"] = sum(ours.get(t) != i for t, i in theirs.items()) + len(set(ours) - set(theirs))
    if tokenizer == "base":
        rows = clf.model.get_input_embeddings().weight.shape[0]
        if len(base.tokenizer) > rows:
            raise UserError(f"the base's tokenizer has {len(base.tokenizer)} tokens, more than the suspect's "
                            f"{rows} embedding rows: it is not the tokenizer of this model's base")
        from w2sdefense.models.loading import fix_padding

        fix_padding(clf.model, base.tokenizer)
        clf.tokenizer = base.tokenizer
    return {**record, "reset_tokenizer": tokenizer}


def _load_base(base_name: str, model: nn.Module, dtype: torch.dtype):
    """The public base as a Classifier of the suspect's label count; a LoRA run given as the base, its adapter folded in
    (the backbone a reset compares with is the model's, not a PEFT wrapper's)."""
    from w2sdefense.models.loading import Classifier, folded, load_classifier

    base = load_classifier(base_name, getattr(model.config, "num_labels", None), dtype)
    return Classifier(folded(base.model), base.tokenizer)


def _reset(model: nn.Module, base: nn.Module, base_name: str, rho: float, mix: str, seed: int, head: str) -> dict:
    """The reset of `model` toward `base` (checked to be the same backbone) and, `head` fresh, a new head."""
    check_same_backbone(model, base, base_name)
    generator = torch.Generator().manual_seed(seed)
    record = reset_toward_base(model, base, rho, mix, generator)
    if record["reset_changed_by_fine_tuning"] == 0:  # every weight equal: the reset above changed nothing either
        raise UserError(f"base_model {base_name!r} has exactly the suspect's backbone weights: the reset would change "
                        "nothing. Give the public model the suspect was fine-tuned from, not the suspect itself")
    if head == "fresh":
        record["reset_head_weights"] = reinit_head(model, generator)
    return {**record, "reset_base": base_name, "reset_head": head}
