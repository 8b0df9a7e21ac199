"""Load any sequence classifier (built-in name, run folder, local checkpoint, PEFT adapter, hub id)."""

from __future__ import annotations

import functools
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from peft import PeftModel
from peft.utils import NoMatchingPeftModuleError
from safetensors import SafetensorError
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
from w2sdefense.fileio import follow_umask
from w2sdefense.models.packaged import PACKAGED, packaged_model_dir
from w2sdefense.models.tiny import TINY_BUILDERS, build_tiny
from w2sdefense.rundir import (FILTER_FILE, METRICS_FILE, MODEL_DIR, TRAIN_LOG, lock_holder, made_by_tool, marker_command,
                               unfinished)

BUILTIN_MODELS = sorted([*PACKAGED, *TINY_BUILDERS])
TEACHER_FILE = "teacher.json"  # what marks a saved teacher (written by models/teacher.py)
# Models whose position ids start after the padding index, so the table holds 2 more than they read.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet",
                          "data2vec-text", "ibert"}

log = logging.getLogger(__name__)


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
    if name in TINY_BUILDERS or name in PACKAGED or Path(name).expanduser().is_dir():
        return
    if _looks_like_hub_id(name):
        _refuse_mistyped_path(name)
        return
    raise UserError(
        f"unknown model {name!r}: not a folder; built-in models: {', '.join(BUILTIN_MODELS)} "
        "(or a local checkpoint folder, a run folder, or a hub id like org/name)"
    )


def _refuse_mistyped_path(name: str) -> None:
    """`runs/victimm` has the form of a hub id, but a local folder `runs/` says a mistyped path is meant:
    refuse it unless the hub id is cached here, rather than ask the hub (and wait out its retries)."""
    path = Path(name).expanduser()
    if not path.parent.is_dir() or _hub_cached(name):
        return
    raise UserError(f"unknown model {name!r}: not a local folder ({path.parent}/ has no {path.name}), and not a hub "
                    "id cached here, so nothing was downloaded; check the path (for the hub model of that name, "
                    f"download it first: huggingface-cli download {name})")


def _hub_cached(repo_id: str) -> bool:
    """Whether the hub model `repo_id` has a config in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a name the hub would not accept: not cached
        return False


def resolve_model_path(name: str) -> str:
    """Map a built-in name or run folder to something `from_pretrained` takes."""
    if name in PACKAGED:
        return str(packaged_model_dir(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if unfinished(path):
            raise UserError(_unfinished_run(name, path))
        if (path / MODEL_DIR).is_dir() and not (path / "config.json").is_file():
            return str(path / MODEL_DIR)  # a run folder of `train` / `defend`
        if marker_command(path) == "clean":
            raise UserError(_unfinished_clean(name, path))
        if _run_without_model(path):
            holder = lock_holder(path)
            raise UserError(f"{name} is an unfinished w2sdefense run with no model yet ("
                            + (f"in use by {holder}: it has not reached its first checkpoint" if holder else
                               "stopped before its first checkpoint") + "): let it finish, or rerun the command "
                            f"that made it (its settings are in {path / 'config.yaml'}) to start it over")
        return str(path)
    check_model_name(name)
    return name  # a hub id


def _run_without_model(path: Path) -> bool:
    """A run folder of train, teacher or defend that has not yet written a checkpoint or its metrics."""
    present = [(path / name).exists() for name in (MODEL_DIR, "config.json", METRICS_FILE, FILTER_FILE)]
    return made_by_tool(path) and (path / TRAIN_LOG).is_file() and not any(present)


def _unfinished_clean(name: str, path: Path) -> str:
    """What a `clean` folder without its cleaned model is: still running (its lock held), or stopped before it."""
    holder = lock_holder(path)
    if holder:
        return (f"{name} is a `w2sdefense clean` folder still in progress (in use by {holder}) that has not written "
                f"its cleaned model yet: let it finish, then pass it again (the model goes to {path / MODEL_DIR})")
    return (f"{name} is an unfinished `w2sdefense clean` folder (stopped before it wrote its cleaned model): rerun the "
            f"clean command that made it (its settings are in {path / 'config.yaml'}) to finish it")


def _unfinished_run(name: str, path: Path) -> str:
    """What an unfinished run folder holds, naming only the checkpoint folder that exists; a run still going (its
    lock held) is said to be running, not stopped."""
    holder = lock_holder(path)
    start = (f"{name} is a training run still in progress (in use by {holder}" if holder else
             f"{name} is an unfinished training run (stopped before its last step")
    finish = "let it finish" if holder else "rerun the command that made it to finish it"
    if (path / MODEL_DIR).is_dir():
        return (f"{start}; its {MODEL_DIR}/ is only the best checkpoint so far): {finish}, or pass {path / MODEL_DIR} "
                "to use that checkpoint as it is")
    old = path / f"{MODEL_DIR}.old"
    if old.is_dir():  # killed between the two renames of a checkpoint swap (fileio.replace_folder)
        return (f"{start}, and while it swapped in a new checkpoint: the last complete one is {old}): {finish} (which "
                f"puts it back as {MODEL_DIR}/), or pass {old} to use that checkpoint as it is")
    return f"{start}, before its first checkpoint): {finish}"


def fix_padding(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Give decoders a pad token (eos) and tell the model which id it is; cap the length (limit_length)."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    # Right padding: decoders pool the rightmost non-pad token, encoders the first one.
    tok.padding_side = "right"
    model.config.pad_token_id = tok.pad_token_id
    limit_length(model, tok)


def max_positions(config) -> int | None:
    """How many tokens the model reads at most (its position table), or None when its config says none."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value - 2 if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES else value
    return None


def limit_length(model, tok: PreTrainedTokenizerBase) -> None:
    """Lower the tokenizer's model_max_length to the model's positions; `encode` cuts longer max_lengths to it.

    The HF example scripts cut max_seq_length at tokenizer.model_max_length; tokenizers built in code (the
    tiny models) or saved without it say "no limit", so the model's config decides too.
    """
    positions = max_positions(model.config)
    if positions is not None and positions < (tok.model_max_length or positions + 1):
        tok.model_max_length = positions


def refuse_teacher(path: str | Path, name: str) -> None:
    """A saved W2SDefense teacher is no sequence classifier: say so, and what takes one."""
    path = Path(path)
    if (path / TEACHER_FILE).is_file() or (path / MODEL_DIR / TEACHER_FILE).is_file():
        raise UserError(
            f"{name} is a W2SDefense teacher (it has {TEACHER_FILE}), not a sequence classifier: --model and "
            "--student cannot load it; `defend --teacher` takes it, and `evaluate --model` measures it"
        )


def _check_labels(config, num_labels: int | None, where: str) -> None:
    trained_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if trained_head and num_labels is not None and config.num_labels != num_labels:
        raise UserError(f"{where} classifies {config.num_labels} labels but the data has {num_labels}")


# What a damaged or foreign checkpoint raises: missing files, bad configs, a corrupt safetensors header, a
# pickle that torch's safe loader (weights_only) refuses.
LOAD_ERRORS = (OSError, ValueError, SafetensorError, pickle.UnpicklingError)


def load_error_reason(exc: Exception) -> str:
    """The first line of a loader's error, with a corrupt weights file said in plain words."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SafetensorError):
        return f"a weights file is damaged or not safetensors ({first})"
    if isinstance(exc, pickle.UnpicklingError):  # torch's advice (weights_only=False) would run the file's code
        return ("a weights file holds pickled objects, which torch's safe loader refuses to load because they could "
                "run code; use a copy saved as safetensors (save_pretrained) from a source you trust")
    return first


def load_classifier(name: str, num_labels: int | None, dtype: torch.dtype = torch.float32) -> Classifier:
    """Load a classifier; a fresh head with `num_labels` outputs when the checkpoint has none."""
    if name in TINY_BUILDERS:
        model, tok = build_tiny(name, num_labels or 2, dtype)
        limit_length(model, tok)
        return Classifier(model, tok)
    path = resolve_model_path(name)
    refuse_teacher(path, name)
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter(Path(path), num_labels, dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        _check_labels(config, num_labels, name)
        kwargs = {} if num_labels is None else {"num_labels": num_labels}
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, trust_remote_code=False, **kwargs)
        _check_tokenizer_files(Path(path), name)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except UserError:
        raise
    except LOAD_ERRORS as exc:
        raise UserError(f"could not load model {name!r} from {path}: {load_error_reason(exc)}") from None
    except RuntimeError as exc:
        if "mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
            raise
        raise UserError(f"could not load model {name!r} from {path}: its config.json does not match its weights (a "
                        "layer's shape differs); use the config.json saved with these weights") from None
    fix_padding(model, tok)
    return Classifier(model, tok)


# The files a saved tokenizer is read from (one of them is enough): fast, WordPiece, BPE, sentencepiece.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def _check_tokenizer_files(path: Path, name: str) -> None:
    """Refuse a local model folder that holds no tokenizer, in words (transformers' own message is cut short)."""
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"could not load model {name!r}: {path} holds no tokenizer files (none of "
                        f"{', '.join(TOKENIZER_FILES[:4])}, ...); save the tokenizer beside the weights "
                        "(tokenizer.save_pretrained(folder))")


def declared_base(name: str) -> tuple[str, str] | None:
    """The public model a suspect says it was fine-tuned from, and where it says so: its adapter_config.json
    (base_model_name_or_path), its config.json (_name_or_path, which transformers 4 saved), its model card's
    `base_model`; in that order. None for a name that is no local folder, or a folder that names none (or itself)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return None
    folder = Path(resolve_model_path(name))
    for file, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        try:
            found = json.loads((folder / file).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, str) and found.strip() and not _same_folder(found, folder):
            return found.strip(), f"{folder / file} ({key})"
    card = _card_base(folder / "README.md")
    return (card, f"{folder / 'README.md'} (base_model)") if card and not _same_folder(card, folder) else None


def _same_folder(name: str, folder: Path) -> bool:
    return Path(name).expanduser().exists() and Path(name).expanduser().resolve() == folder.resolve()


def _card_base(card: Path) -> str | None:
    """A model card's `base_model` (its YAML front matter between --- lines); the first of a list."""
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    try:
        meta = yaml.safe_load(front)
    except yaml.YAMLError:
        return None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    base = base[0] if isinstance(base, list) and base else base
    return base.strip() if isinstance(base, str) and base.strip() else None


def adapter_base(path: Path) -> str:
    """The base model an adapter folder names; a same-named folder beside the adapter comes first.

    A run saves a base built in code beside its adapter (RUN/base next to RUN/model) and records its
    absolute path. A moved or copied run must use its own copy: the recorded path is gone after a move,
    and after a copy it is the original's base, which a rerun of the original replaces.
    """
    base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise UserError(f"{path}: adapter_config.json names no base model")
    recorded = Path(base_name).expanduser()
    if base_name in TINY_BUILDERS or base_name in PACKAGED or (_looks_like_hub_id(base_name) and not recorded.exists()):
        return base_name  # never saved beside the adapter
    for beside in (path.parent / recorded.name, path / recorded.name):
        if (beside / "config.json").is_file():
            if beside.resolve() != recorded.resolve():
                log.info("%s: using the base %s beside it, not the recorded %s", path, beside, base_name)
            return str(beside)
    if recorded.exists():
        return base_name
    raise UserError(f"{path}: its base model {base_name} is not there (moved or deleted), and no "
                    f"{recorded.name}/ folder with a config.json sits beside the adapter; put the base back, or "
                    "set base_model_name_or_path in adapter_config.json to where it is now")


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, the shape "
                            r"in current model is (.+?)\.?$", re.MULTILINE)


def _misfit(path: Path, exc: Exception) -> str | None:
    """What differs between an adapter and the base it was put on (from peft's or torch's error), or None."""
    if isinstance(exc, NoMatchingPeftModuleError):
        targets = json.loads((path / "adapter_config.json").read_text()).get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else sorted(targets)
        return f"the modules it adapts ({', '.join(targets)}) are not in that model"
    found = _SIZE_MISMATCH.search(str(exc))
    if found is None:
        return None
    key, theirs, ours = (g.replace("torch.Size", "") for g in found.groups())
    return f"{key} is {theirs} in the adapter but {ours} in the base (a model of another width)"


def _load_adapter(path: Path, num_labels: int | None, dtype: torch.dtype) -> Classifier:
    """A PEFT adapter folder: load its base, then the adapter (and its trained head) on top."""
    base_name = adapter_base(path)
    base = load_classifier(base_name, num_labels, dtype)
    try:
        model = PeftModel.from_pretrained(base.model, str(path))
    except (*LOAD_ERRORS, RuntimeError) as exc:
        misfit = _misfit(path, exc)
        if misfit is None and not isinstance(exc, LOAD_ERRORS):
            raise
        if misfit is None:
            raise UserError(f"could not load the adapter {path}: {load_error_reason(exc)}") from None
        raise UserError(f"the adapter {path} does not fit its base {base_name} (a {base.config.model_type} model): "
                        f"{misfit}; give it the base it was trained on (base_model_name_or_path in its "
                        "adapter_config.json)") from None
    own = (path / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False) if own else base.tokenizer
    fix_padding(model, tok)
    return Classifier(model, tok)


def save_classifier(clf: Classifier, out_dir: Path, state_dict: dict | None = None) -> None:
    """Save in standard HF formats: full weights, or a PEFT adapter with its trained head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.model.save_pretrained(out_dir, state_dict=state_dict)
    clf.tokenizer.save_pretrained(out_dir)
    follow_umask(out_dir)


def merge_adapter(adapter_dir: Path, out_dir: Path, num_labels: int | None, dtype: torch.dtype = torch.float32) -> None:
    """Fold a saved adapter into its base and save the plain model (what `from_pretrained` loads); a folder of
    full weights is saved as it is."""
    clf = load_classifier(str(adapter_dir), num_labels, dtype)
    save_classifier(Classifier(folded(clf.model), clf.tokenizer), out_dir)


def folded(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """`model` as plain weights: an adapter folded into its base; a plain model as it is."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


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


@functools.lru_cache(maxsize=16)
def parameter_count(name: str, num_labels: int = 2) -> int | None:
    """How many parameters the classifier `name` has (an adapter: its base's), counted on the meta device from its
    config without reading a weight; None where it cannot be told (a hub id not cached here, an unreadable config)."""
    try:
        if name in TINY_BUILDERS:
            return count_parameters(build_tiny(name, num_labels, torch.float32)[0])["total_params"]
        path = Path(resolve_model_path(name))
        if (path / "adapter_config.json").is_file():
            return parameter_count(adapter_base(path), num_labels)
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        config.num_labels = num_labels
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
    except (UserError, *LOAD_ERRORS):
        return None
    return count_parameters(model)["total_params"]


def label_names(name: str) -> list[str] | None:
    """The names a model's config.json gives its labels (id2label, in id order); None where it gives none but the
    generic LABEL_0, LABEL_1, ... or cannot be read (a hub id not cached, an adapter folder)."""
    try:
        config = json.loads((Path(resolve_model_path(name)) / "config.json").read_text(encoding="utf-8"))
        names = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    except (OSError, ValueError, AttributeError, UserError):
        return None
    if sorted(names) != list(range(len(names))) or all(v == f"LABEL_{k}" for k, v in names.items()):
        return None
    return [names[i] for i in range(len(names))]
