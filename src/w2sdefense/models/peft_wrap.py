"""Wrap a classifier with a fresh LoRA adapter (peft); the classification head stays trainable."""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model

from w2sdefense.config import LoraConfig
from w2sdefense.errors import UserError
from w2sdefense.models.loading import Classifier

HEAD_SUFFIXES = ("classifier", "score")  # peft's modules_to_save for sequence classification


def wrap_lora(clf: Classifier, cfg: LoraConfig) -> Classifier:
    """Freeze the base, add LoRA to the target modules, keep the head (`score`/`classifier`) trainable."""
    if isinstance(clf.model, PeftModel):
        raise ValueError("merge the existing adapter before adding a new one")
    targets, exclude = cfg.target_modules, None
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand: every linear layer but the output head
        # The task's head is trained whole (modules_to_save matches names ending in these), so no adapter goes
        # on any part of it: DistilBERT's `pre_classifier` would otherwise get both and peft refuses.
        exclude = [name for name, _ in clf.model.named_modules() if name.endswith(HEAD_SUFFIXES)] or None
    peft_cfg = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=targets, exclude_modules=exclude,
    )
    try:
        model = get_peft_model(clf.model, peft_cfg)
    except ValueError as exc:
        family = getattr(clf.model.config, "model_type", "?")
        raise UserError(f"LoRA could not wrap the {family} model: {str(exc).splitlines()[0]} (set "
                        "train.lora.target_modules to its module names, or [all-linear], the default)") from None
    return Classifier(model, clf.tokenizer)
