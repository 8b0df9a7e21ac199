"""Loading classifiers and tokenizers (packaged, local, hub, tiny test models); PEFT wrapping."""

from w2sdefense.models.loading import (
    BUILTIN_MODELS,
    Classifier,
    check_model_name,
    count_parameters,
    ensure_base_on_disk,
    is_decoder,
    load_classifier,
    merge_adapter,
    save_classifier,
)
from w2sdefense.models.peft_wrap import wrap_lora

__all__ = [
    "BUILTIN_MODELS", "Classifier", "check_model_name", "count_parameters", "ensure_base_on_disk", "is_decoder",
    "load_classifier", "merge_adapter", "save_classifier", "wrap_lora",
]
