"""Wrap a classifier with a fresh LoRA adapter (peft); the classification head stays trainable."""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model

from w2sdefense.config import LoraConfig
from w2sdefense.errors import UserError
from w2sdefense.models.loading import Classifier


def wrap_lora(clf: Classifier, cfg: LoraConfig) -> Classifier:
    """Freeze the base, add LoRA to the target modules, keep the head (`score`/`classifier`) trainable."""
    if isinstance(clf.model, PeftModel):
        raise ValueError("merge the existing adapter before adding a new one")
    targets = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand: every linear layer but the output head
    peft_cfg = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=targets,
    )
    try:
        model = get_peft_model(clf.model, peft_cfg)
    except ValueError as exc:
        raise UserError(f"LoRA could not wrap the model: {str(exc).splitlines()[0]} "
                        "(set train.lora.target_modules)") from None
    return Classifier(model, clf.tokenizer)
