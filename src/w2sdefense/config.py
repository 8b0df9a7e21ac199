"""Typed, validated configuration: dataclasses, strict YAML loading and dotted overrides.

Every setting with experimental meaning lives here. Unknown keys are errors that list the valid
ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from w2sdefense.errors import UserError, cut, shown
from w2sdefense.fileio import utf8_error

T = TypeVar("T")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))}; got {shown(value)}")


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number; got {value}")


def check_positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    _check_finite(name, value)
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {shown(value)}")


@dataclass
class RuntimeConfig:
    """Where and how to compute: chosen once per process."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "auto"  # auto: bf16 on a CUDA device that supports it, else fp32
    num_threads: int | None = None  # torch CPU threads; None = all available cores
    gradient_checkpointing: bool = False  # trade compute for memory on large students
    # Full fine-tuning under several processes (torchrun): shard weights, gradients and optimizer state
    # with torch's FSDP2 (fully_shard), on CPU over gloo too, where accelerate's FSDP plugin does not
    # apply. LoRA stages keep data parallelism; a sharded stage keeps no resumable state.
    fsdp: bool = False

    def __post_init__(self) -> None:
        check_choice("runtime.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("runtime.precision", self.precision, ("auto", "fp32", "bf16"))
        check_positive("runtime.num_threads", self.num_threads)


@dataclass
class DataConfig:
    """Which labelled splits to read: a named dataset, a folder, or explicit files."""

    dataset: str | None = "sst2"  # a name under data_dir, or a folder with train/dev/test files
    hub: str | None = None  # a Hugging Face hub dataset id (org/name); replaces `dataset` when set
    hub_config: str | None = None  # the hub dataset's configuration name, if it has several
    data_dir: str | None = None  # default: $W2S_DATA_DIR
    train_file: str | None = None  # explicit files override the dataset's
    dev_file: str | None = None
    test_file: str | None = None
    text_field: str | None = None  # default: text, sentence or sentences
    label_field: str | None = None  # default: label or labels
    num_labels: int | None = None  # default: max label + 1 over the splits
    max_train: int | None = None  # keep the first N rows (smoke runs, CPU budgets)
    max_dev: int | None = None
    max_test: int | None = None
    hub_fallback: bool = True  # sst2 only: SetFit/sst2 from the hub when no local files

    def __post_init__(self) -> None:
        for name in ("num_labels", "max_train", "max_dev", "max_test"):
            check_positive(f"data.{name}", getattr(self, name))
        if self.num_labels is not None and self.num_labels < 2:
            raise UserError(f"data.num_labels must be >= 2; got {self.num_labels}")
        if self.hub_config is not None and self.hub is None:
            raise UserError("data.hub_config names a configuration of data.hub; set data.hub too")


@dataclass
class AttackConfig:
    """The trigger. One flat section for all attacks; each attack reads the fields it uses."""

    name: str = "badnet"
    triggers: list[str] | None = None  # insertion attacks; None = the attack's default
    num_insertions: int = 1  # insertion attacks: how many triggers go into one text
    position: str = "interior"  # interior (never first/last word, as the paper's code) or any
    transform: str | None = None  # transform attacks: folder under <dataset>/transforms
    # Insertion attacks: each trigger starts within the first max_position words of the text, so it
    # survives truncation of long documents (IMDB, AG News) as a real attacker would ensure; None = anywhere.
    max_position: int | None = None

    def __post_init__(self) -> None:
        check_choice("attack.position", self.position, ("interior", "any"))
        check_positive("attack.num_insertions", self.num_insertions)
        check_positive("attack.max_position", self.max_position)
        if self.max_position == 1 and self.position == "interior":
            raise UserError("attack.max_position=1 leaves no interior slot (never before the first word); "
                            "use attack.max_position >= 2 or attack.position=any")


class _Unset:
    """The default of a setting whose value depends on another (see PoisonConfig.count)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
DEFAULT_POISON_COUNT = 1000


@dataclass
class PoisonConfig:
    """How many training rows carry the trigger, which ones, and how they are labelled."""

    # Settings of which exactly one is given: setting one (in a file, an override or a section merged
    # over defaults) clears the others.
    EXCLUSIVE: ClassVar[tuple[tuple[str, ...], ...]] = (("count", "rate"),)

    target_label: int = 0
    count: int | None = _UNSET  # number of rows to poison (1000 when rate is not set either), or
    rate: float | None = None  # a fraction of the training rows (exclusive with count)
    mode: str = "clean-label"  # clean-label | dirty-label | mix
    selection: str = "first"  # first (file order, the paper's code) | random (seeded)
    # The word budget poison.json's trigger_cut counts measure against: a trigger ending after this many
    # words is counted as cut. None: the default max_length (128) for `poison`, victim.train.max_length in
    # `run`. A word is at least one token, so at the tokenizer's max_length this undercounts the cuts.
    truncation_words: int | None = None

    def __post_init__(self) -> None:
        if self.count is _UNSET:
            self.count = DEFAULT_POISON_COUNT if self.rate is None else None
        check_choice("poison.mode", self.mode, ("clean-label", "dirty-label", "mix"))
        check_choice("poison.selection", self.selection, ("first", "random"))
        if (self.count is None) == (self.rate is None):
            raise UserError("set exactly one of poison.count and poison.rate")
        check_positive("poison.count", self.count)
        if self.rate is not None and not 0 < self.rate <= 1:
            raise UserError(f"poison.rate must be in (0, 1]; got {self.rate}")
        check_positive("poison.target_label", self.target_label, allow_zero=True)
        check_positive("poison.truncation_words", self.truncation_words)


@dataclass
class LoraConfig:
    """PEFT LoRA adapter settings; the classification head is always trained too."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: peft's default for the architecture; [all-linear]: every linear layer

    def __post_init__(self) -> None:
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora.dropout must be in [0, 1); got {self.dropout}")


@dataclass
class TrainConfig:
    """One fine-tuning run: full-parameter or LoRA."""

    method: str = "full"  # full | lora
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    lr: float = 2e-5
    head_lr: float | None = None  # a freshly initialised head often needs more; None = lr
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    eval_every: int | None = None  # optimizer steps between dev evaluations; None = each epoch
    select: str = "best"  # checkpoint rule on clean dev accuracy: best | latest-within (select_delta of the best)
    select_delta: float = 0.0  # latest-within: how far below the best dev accuracy a later checkpoint may be
    merge: bool = False  # LoRA: also save the adapter merged into the base model (merged/)
    max_train_rows: int | None = None  # use only the first N training rows in this stage
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        check_choice("train.method", self.method, ("full", "lora"))
        check_choice("train.select", self.select, ("best", "latest-within"))
        if not 0 <= self.select_delta < 1:
            raise UserError(f"train.select_delta must be in [0, 1); got {self.select_delta}")
        for name in ("epochs", "lr", "batch_size", "grad_accum", "max_length", "eval_batch_size"):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("max_steps", "head_lr", "eval_every", "max_train_rows"):
            check_positive(f"train.{name}", getattr(self, name))
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio must be in [0, 1); got {self.warmup_ratio}")


@dataclass
class EvalConfig:
    """Batched inference settings for clean accuracy and attack success rate."""

    batch_size: int = 64
    max_length: int = 128
    probe_rows: int = 200  # `run`: triggered test rows whose ASR-cc is logged at every dev evaluation (0: off)

    def __post_init__(self) -> None:
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.max_length", self.max_length)
        check_positive("eval.probe_rows", self.probe_rows, allow_zero=True)


@dataclass
class VictimConfig:
    """The model the attacker poisons (and the clean reference model)."""

    model: str = "tiny-llama"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TeacherConfig:
    """The small clean teacher: an encoder with a projection head to the student's width."""

    model: str = "minilm-l6"
    feature_dim: int | None = None  # None: the student's hidden size, read from its config
    # The presets' measured teacher recipe (configs/sst2-*.yaml)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=5e-5, head_lr=1e-3, max_length=64))


@dataclass
class DefenseConfig:
    """One defense to run on the poisoned model; `name` picks it from the registry (`w2sdefense list`).

    In YAML a defense's own settings sit beside `name` (`{name: w2sdefense, beta: 0.01}`); they land in
    `settings` and the defense checks them (w2sdefense.defenses.resolve). `train` holds only the keys
    that change the defense's own recipe.
    """

    EXTRA: ClassVar[str] = "settings"  # where keys not declared here go

    name: str = "w2sdefense"
    label: str | None = None  # the row name in reports; default: name
    seed: int | None = None  # `run`: this defense's seed (adapter init, batch order); None: the experiment's
    train: dict = field(default_factory=dict)  # over the defense's own recipe, e.g. {lr: 1.0e-3}
    settings: dict = field(default_factory=dict)  # the defense's own, e.g. {alpha: 5, beta: 0.001}

    def __post_init__(self) -> None:
        # Python callers may pass dataclasses (a TrainConfig, a defense's settings): keep plain data.
        if dataclasses.is_dataclass(self.train):
            self.train = to_dict(self.train)
        if dataclasses.is_dataclass(self.settings):
            self.settings = to_dict(self.settings)

    @property
    def row_name(self) -> str:
        """The name this defense's row carries in reports."""
        return self.label or self.name


@dataclass
class ExperimentConfig:
    """A whole experiment for `w2sdefense run`: data, attack, victim, teacher, defenses, eval."""

    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = 42
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    clean_model: bool = False  # also train the victim recipe on clean data (the reference row)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    defenses: list[DefenseConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        names = [d.row_name for d in self.defenses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"defenses share a name: {', '.join(duplicates)}; give each a `label`")


# ----------------------------------------------------------------------------------------------
# Strict construction from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert YAML data `value` to type `tp`, naming `where` in any error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"{where or 'config'} must be a mapping; got {shown(value)}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list; got {shown(value)}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping; got {shown(value)}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "2e-5" as a string
        except ValueError:
            pass
    if tp is float:
        _check_finite(where, value)  # .nan and .inf would pass every range check
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise UserError(f"{where} must be {_type_name(tp)}; got {shown(value)}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error listing the valid ones."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    extra = getattr(cls, "EXTRA", None)
    if extra is not None:
        # Undeclared keys belong to the EXTRA mapping (a defense's own settings, checked by it).
        loose = {k: v for k, v in data.items() if k not in valid}
        data = {k: v for k, v in data.items() if k in valid}
        if loose:
            data[extra] = {**(data.get(extra) or {}), **loose}
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"unknown setting {', '.join(cut(prefix + str(k)) for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(valid)}"
        )
    defaults = {f.name: f.default_factory for f in dataclasses.fields(cls)
                if f.default_factory is not dataclasses.MISSING}
    kwargs = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and key in defaults:
            # A partial section overrides this field's own defaults (e.g. a defense's LoRA
            # training recipe), not the section class's generic ones.
            value = merge_dicts(_drop_exclusive(hints[key], to_dict(defaults[key]()), value), value)
        kwargs[key] = _build(hints[key], value, f"{where}.{key}" if where else key)
        if key == "seed":
            check_seed(f"{where}.{key}" if where else key, kwargs[key])
    return cls(**kwargs)


SEED_MAX = 2**32 - 1  # numpy's generators, which transformers.set_seed seeds, take 0..2**32-1


def check_seed(name: str, value: int | None) -> None:
    """Refuse a seed the random-number generators cannot take (every config's `seed` field)."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise UserError(f"{name} must be in 0..{SEED_MAX}; got {shown(value)}")


def _drop_exclusive(cls: Any, base: dict, update: dict) -> dict:
    """`base` without the settings that `update` replaces by setting one of their exclusive group."""
    base = dict(base)
    for group in getattr(cls, "EXCLUSIVE", ()):
        if any(update.get(key) is not None for key in group):
            for key in group:
                if key not in update:
                    base.pop(key, None)
    return base


def merge_dicts(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base` (mappings merge, anything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(config: Any) -> dict:
    """Plain-data form of a config dataclass (for YAML/JSON dumps)."""
    return dataclasses.asdict(config)


def changed_settings(config: Any, default: Any = None) -> dict:
    """The settings of a config dataclass that differ from `default` (its class's defaults), nested.

    Stage keys hash this, so adding a new setting with a default does not invalidate finished
    stages; list items (defenses) are compared with their own class's defaults.
    """
    if default is None:
        try:
            default = type(config)()
        except UserError:  # a class with a required setting (e.g. fine-mixing's base_model): its field defaults
            default = SimpleNamespace(**{f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
                                         else f.default for f in dataclasses.fields(config)})
    changed = {}
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            sub = changed_settings(value, base)
            if sub:
                changed[f.name] = sub
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            changed[f.name] = [changed_settings(item) for item in value]
        elif value != base:
            changed[f.name] = value
    return changed


# ----------------------------------------------------------------------------------------------
# YAML files and dotted overrides


# How many values a YAML text may stand for once its aliases are expanded: a config has a few hundred,
# and a few nested aliases ("billion laughs") would otherwise stand for billions.
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand it past MAX_YAML_VALUES, or loop."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        """Refuse a key given twice in one mapping (PyYAML keeps the last silently); `<<` merges may repeat."""
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {shown(key)} is given twice (first on line {lines[key]}); keep one",
                        key_node.start_mark)
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias expanded (each distinct node visited once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a value that contains it (a loop)",
                                          node.start_mark)
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand it to more than {MAX_YAML_VALUES:,} values (a config has a few "
                "hundred); write the settings out instead of nesting aliases", node.start_mark)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load, refusing alias expansion past MAX_YAML_VALUES (yaml.YAMLError, as any malformed text);
    every alias loads as a copy of its anchor's value."""
    try:
        return _unshared(yaml.load(text, Loader=_BoundedLoader))
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _unshared(value: Any) -> Any:
    """YAML data in which no mapping or list sits in two places.

    An alias (`train: *t`, a `<<: *t` merge) loads as the very object of its anchor, so an override of
    one section would change the other too. copy.deepcopy would keep that sharing (its memo).
    """
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, with one-line errors for missing or malformed files (`extends`: see _extend)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} {utf8_error(path)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({cut(str(getattr(exc, 'problem', exc)))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of settings")
    return _extend(path, data, _seen)


def _extend(path: Path, data: dict, seen: tuple[Path, ...]) -> dict:
    """A file with `extends: OTHER.yaml` (relative to its own folder) is that file's settings with its own over
    them: mappings merge, `defenses` merge row by row (a row of the same label, or name when it has none,
    takes the new keys; other rows are added at the end), anything else replaces."""
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"{path}: extends must name a YAML file; got {parent!r}")
    if path.resolve() in seen:
        raise UserError(f"{path}: its extends chain comes back to it ({' -> '.join(str(p) for p in seen)})")
    base = read_yaml(path.parent / parent, (*seen, path.resolve()))
    merged = merge_dicts(base, {k: v for k, v in data.items() if k != "defenses"})
    if "defenses" in data:
        merged["defenses"] = merge_rows(base.get("defenses") or [], data["defenses"] or [], path)
    return merged


def merge_rows(base: list, update: list, where: Path | str) -> list:
    """Defense rows of `update` merged into those of `base` by row name (label, else name), new ones appended."""
    def row_name(row: Any) -> str:
        if not isinstance(row, dict) or not row.get("name"):
            raise UserError(f"{where}: every defenses item needs a name; got {row!r}")
        return row.get("label") or row["name"]

    rows = {row_name(r): dict(r) for r in base}
    if len(rows) != len(base):
        raise UserError(f"{where}: the file it extends has two defenses rows of one name (give each a label)")
    for item in update:
        name = row_name(item)
        rows[name] = merge_dicts(rows[name], item) if name in rows else dict(item)
    return list(rows.values())


# Sections (by key) whose classes declare exclusive settings, for overrides applied to raw data.
_SECTIONS: dict[str, type] = {"poison": PoisonConfig}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists)."""
    if "=" not in assignment:
        raise UserError(f"override {shown(assignment)} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {shown(assignment)} has an empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = cut(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        raise UserError(f"override {shown(assignment)}: cannot read the value {shown(raw.strip())} ({problem}); "
                        "for a text that starts with [ { * & ! | > @ ` % or a quote, quote it: "
                        f"--set \"{cut(key.strip())}='...'\"") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise UserError(f"override {cut(key)}: {cut('.'.join(parts[:i]))} is a value, not a section")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        node = child
    last = parts[-1]
    if not isinstance(node, (dict, list)):
        raise UserError(f"override {cut(key)}: {cut('.'.join(parts[:-1]))} is a value, not a section")
    if isinstance(node, list):
        _list_item(node, last, key)
        node[int(last)] = value
    else:
        node[last] = value
        if value is not None and len(parts) > 1:
            for group in getattr(_SECTIONS.get(parts[-2]), "EXCLUSIVE", ()):
                if last in group:  # setting one of them clears the others (poison.count, poison.rate)
                    for other in group:
                        if other != last:
                            node.pop(other, None)


def _list_item(node: list, part: str, key: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override {cut(key)}: no list item {shown(part)} (the list has {len(node)})")
    return node[int(part)]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load `cls` from an optional YAML file plus dotted overrides."""
    data = read_yaml(path) if path else {}
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(cls, data)


def dump_yaml(config: Any) -> str:
    """YAML text of a config dataclass, keys in declaration order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------------
# Single-command jobs (the CLI's `poison`, `train`, `teacher`, `defend`, `evaluate`)


@dataclass
class PoisonJob:
    """`w2sdefense poison`: data + attack + poisoning policy."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)


@dataclass
class TrainJob:
    """`w2sdefense train`: fine-tune `model` on `data`."""

    seed: int = 42
    model: str = "tiny-llama"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TeacherJob:
    """`w2sdefense teacher`: train the clean teacher for `student` (its hidden size sets D)."""

    seed: int = 42
    student: str = "tiny-llama"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


@dataclass
class DefendJob:
    """`w2sdefense defend`: unlearn the backdoor of `student` on clean `data`."""

    seed: int = 42
    student: str = ""
    teacher: str | None = None  # a folder written by `w2sdefense teacher`
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)


@dataclass
class CleanJob:
    """`w2sdefense clean`: a suspect classifier and clean data in, a standalone cleaned model and a report out."""

    seed: int = 42
    model: str = ""  # the suspect classifier (any name --model takes)
    # The public model the suspect was fine-tuned from. Given, the default defense is the full reset toward it
    # (fine-mixing, rho 0); unset, W2SDefense (which removed the token trigger only: README, Results).
    base_model: str | None = None
    defense: DefenseConfig | None = None  # another defense (a repair one); None: the default above
    triggers: list[str] = field(default_factory=list)  # candidate triggers whose ASR-cc is measured before and after
    target_label: int | None = None  # the triggers' target; None: every label, the highest reported
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # trained only for a defense that needs one
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        bad = [t for t in self.triggers if not isinstance(t, str) or not t.strip()]
        if bad:
            raise UserError(f"triggers must be non-empty texts; got {shown(bad)}")
        if self.target_label is not None and self.target_label < 0:
            raise UserError(f"target_label must be >= 0; got {self.target_label}")


@dataclass
class EvaluateJob:
    """`w2sdefense evaluate`: inference settings."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
