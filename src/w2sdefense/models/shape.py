"""What a model is, read from its config alone (no weights): its family, width, depth and vocabulary.

A weight reset needs a base of the victim's shape; `run` compares them before its first stage
(pipeline.check_bases), and the teacher reads the student's width here. A hub model whose config cannot
be read on this machine (offline and not cached, gated, or needing remote code) raises ConfigUnavailable.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from transformers import AutoConfig

from w2sdefense.errors import UserError, cut
from w2sdefense.models.loading import LOAD_ERRORS, adapter_base, load_error_reason, refuse_teacher, resolve_model_path
from w2sdefense.models.tiny import TINY_BUILDERS, build_tiny


class ConfigUnavailable(UserError):
    """A hub model's config could not be read here: its shape is unknown until its weights are loaded."""


@dataclass(frozen=True)
class ModelShape:
    """The config values a base must share with the model fine-tuned from it (None: the config has none)."""

    family: str  # config.model_type: llama, bert, ...
    hidden_size: int | None
    layers: int | None
    vocab_size: int | None

    def describe(self) -> str:
        """E.g. `a llama model (hidden size 576, 30 layers, vocabulary 49152)`."""
        known = [f"hidden size {self.hidden_size}" if self.hidden_size else "",
                 f"{self.layers} layers" if self.layers else "", f"vocabulary {self.vocab_size}" if self.vocab_size else ""]
        details = ", ".join(k for k in known if k)
        return f"a {self.family} model" + (f" ({details})" if details else "")

    def differences(self, other: ModelShape) -> list[str]:
        """What differs from `other`, as `family bert vs llama`; values either config lacks are not compared."""
        names = {"family": "family", "hidden_size": "hidden size", "layers": "layers", "vocab_size": "vocabulary"}
        found = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine is not None and theirs is not None and mine != theirs:
                found.append(f"{names[f.name]} {mine} vs {theirs}")
        return found


def shape_of(config) -> ModelShape:
    """A transformers config's shape (its text model's, for a multimodal config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(family=getattr(config, "model_type", "") or type(config).__name__,
                      hidden_size=getattr(text, "hidden_size", None), layers=getattr(text, "num_hidden_layers", None),
                      vocab_size=getattr(text, "vocab_size", None))


def model_shape(name: str) -> ModelShape:
    """The shape of any model --model takes (built-in, folder, run folder, adapter: its base, hub id), from its config.

    An unknown name or a damaged local config is a UserError; a hub config that cannot be read here is ConfigUnavailable.
    """
    if name in TINY_BUILDERS:
        return shape_of(build_tiny(name, 2)[0].config)
    path = Path(resolve_model_path(name))  # converts a packaged GGUF model once, as loading it would
    refuse_teacher(path, name)
    if (path / "adapter_config.json").is_file():
        return model_shape(adapter_base(path))
    try:
        return shape_of(AutoConfig.from_pretrained(path, trust_remote_code=False))
    except LOAD_ERRORS as exc:
        reason = cut(load_error_reason(exc), 160)
        if path.is_dir():
            raise UserError(f"could not read the config of model {name!r} in {path}: {reason}") from None
        raise ConfigUnavailable(f"the config of {name} cannot be read here ({reason})") from None


def base_mismatch(base: str, model: str) -> str | None:
    """Why `base` cannot be the public model `model` was fine-tuned from (family, width, depth or vocabulary
    differ), or None when they agree. The same name agrees without reading anything."""
    if base == model:
        return None
    mine, theirs = model_shape(base), model_shape(model)
    differs = mine.differences(theirs)
    if not differs:
        return None
    return f"{base} is {mine.describe()} and {model} is {theirs.describe()}: {', '.join(differs)}"
