"""Load any sequence classifier (built-in name, run folder, local checkpoint, PEFT adapter, hub id)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from w2sdefense.errors import UserError
from w2sdefense.models.packaged import PACKAGED, packaged_model_dir
from w2sdefense.models.tiny import TINY_BUILDERS, build_tiny
from w2sdefense.rundir import unfinished

BUILTIN_MODELS = sorted([*PACKAGED, *TINY_BUILDERS])


@dataclass
class Classifier:
    """A sequence-classification model with the tokenizer that feeds it."""

    model: PreTrainedModel | PeftModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def config(self):
        """The underlying transformers config (also through a PEFT wrapper)."""
        return self.model.config


def is_decoder(config) -> bool:
    """Decoder-only LMs pool the last non-pad token; encoders read the first token."""
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def check_model_name(name: str) -> None:
    """Fail early (before any work) on a name that is neither built in, a folder, nor a hub id."""
    if name in TINY_BUILDERS or name in PACKAGED or Path(name).expanduser().is_dir() or _looks_like_hub_id(name):
        return
    raise UserError(
        f"unknown model {name!r}: not a folder; built-in models: {', '.join(BUILTIN_MODELS)} "
        "(or a local checkpoint folder, a run folder, or a hub id like org/name)"
    )


def resolve_model_path(name: str) -> str:
    """Map a built-in name or run folder to something `from_pretrained` takes."""
    if name in PACKAGED:
        return str(packaged_model_dir(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if unfinished(path):
            raise UserError(f"{name} is an unfinished training run (stopped before its last step; its model/ is "
                            "only the best checkpoint so far): rerun the command that made it to finish it, or "
                            f"pass {path / 'model'} to use that checkpoint as it is")
        if (path / "model").is_dir() and not (path / "config.json").is_file():
            return str(path / "model")  # a run folder of `train` / `defend`
        return str(path)
    check_model_name(name)
    return name  # a hub id


def fix_padding(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Give decoders a pad token (eos) and tell the model which id it is."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    # Right padding: decoders pool the rightmost non-pad token, encoders the first one.
    tok.padding_side = "right"
    model.config.pad_token_id = tok.pad_token_id


def _check_labels(config, num_labels: int | None, where: str) -> None:
    trained_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if trained_head and num_labels is not None and config.num_labels != num_labels:
        raise UserError(f"{where} classifies {config.num_labels} labels but the data has {num_labels}")


def load_classifier(name: str, num_labels: int | None, dtype: torch.dtype = torch.float32) -> Classifier:
    """Load a classifier; a fresh head with `num_labels` outputs when the checkpoint has none."""
    if name in TINY_BUILDERS:
        model, tok = build_tiny(name, num_labels or 2, dtype)
        return Classifier(model, tok)
    path = resolve_model_path(name)
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter(Path(path), num_labels, dtype)
    try:
        config = AutoConfig.from_pretrained(path)
        _check_labels(config, num_labels, name)
        kwargs = {} if num_labels is None else {"num_labels": num_labels}
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **kwargs)
        tok = AutoTokenizer.from_pretrained(path)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model {name!r} from {path}: {str(exc).splitlines()[0]}") from None
    fix_padding(model, tok)
    return Classifier(model, tok)


def _load_adapter(path: Path, num_labels: int | None, dtype: torch.dtype) -> Classifier:
    """A PEFT adapter folder: load its base, then the adapter (and its trained head) on top."""
    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base_name:
        raise UserError(f"{path}: adapter_config.json names no base model")
    base = load_classifier(base_name, num_labels, dtype)
    model = PeftModel.from_pretrained(base.model, str(path))
    tok = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else base.tokenizer
    fix_padding(model, tok)
    return Classifier(model, tok)


def save_classifier(clf: Classifier, out_dir: Path, state_dict: dict | None = None) -> None:
    """Save in standard HF formats: full weights, or a PEFT adapter with its trained head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.model.save_pretrained(out_dir, state_dict=state_dict)
    clf.tokenizer.save_pretrained(out_dir)


def merge_adapter(adapter_dir: Path, out_dir: Path, num_labels: int | None) -> None:
    """Fold a saved adapter into its base and save the plain model (what `from_pretrained` loads)."""
    clf = load_classifier(str(adapter_dir), num_labels)
    save_classifier(Classifier(clf.model.merge_and_unload(), clf.tokenizer), out_dir)


def ensure_base_on_disk(clf: Classifier, folder: Path, write: bool = True) -> None:
    """An adapter must name a loadable base: save bases built in code (tiny models) first."""
    current = clf.model.config._name_or_path
    if current and (Path(current).is_dir() or _looks_like_hub_id(current)):
        return
    if write:
        save_classifier(clf, folder)
    clf.model.config._name_or_path = str(folder.resolve())
    clf.model.name_or_path = str(folder.resolve())


def _looks_like_hub_id(name: str) -> bool:
    """True for `org/name`, the form of a hub id, as opposed to a missing local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).suffix


def count_parameters(model: torch.nn.Module) -> dict:
    """Trainable and total parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total}
