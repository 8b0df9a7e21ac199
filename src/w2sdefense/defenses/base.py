"""What a defense is: its declaration (kind, fine-tuning method, teacher, settings, recipe), the
registry it is chosen from, and the job it is given. One file per defense registers one.

A `repair` defense produces a model, evaluated like any other; an `input-filter` defense leaves the
model alone and decides per input at inference time. The pipeline reads these declarations and never
a defense's name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2sdefense.config import DefenseConfig, TrainConfig, changed_settings, from_dict, merge_dicts, to_dict
from w2sdefense.data.records import Splits
from w2sdefense.defenses.filtering import read_filter
from w2sdefense.eval.filtering import InputFilter
from w2sdefense.errors import UserError
from w2sdefense.registry import Registry
from w2sdefense.rundir import RESERVED_ROWS
from w2sdefense.runtime import Runtime
from w2sdefense.results import DefenseResult
from w2sdefense.train.job import Diagnostics, prepare_student, record_stage, train_classifier

KINDS = ("repair", "input-filter")
METHODS = ("lora", "full", "any", None)


@dataclass(frozen=True)
class NoSettings:
    """A defense with no settings of its own (its training recipe is under `train`)."""


@dataclass(frozen=True)
class DefenseSpec:
    """A defense's declaration; `run` does the work on a DefenseJob and returns its metrics."""

    name: str
    kind: str  # repair | input-filter
    run: Callable[["DefenseJob"], dict]
    method: str | None  # the fine-tuning it does: lora | full | any (train.method decides) | None (none)
    needs_teacher: bool = False
    settings: type = NoSettings  # a dataclass of its own settings, validated on construction
    train: dict = field(default_factory=dict)  # its own training recipe; a config's `train` overrides keys
    summary: str = ""
    # input filters: rebuilds the calibrated filter from (settings, saved state)
    load_filter: Callable[[Any, dict], InputFilter] | None = None
    # a repair that trains the poisoned model as it is (False: it changes the model first, e.g. pruning),
    # so the poisoned model's own evaluation is its step 0
    starts_from_victim: bool = True


DEFENSES: Registry[DefenseSpec] = Registry("defense", "defenses[].name")


def register_defense(name: str, *aliases: str, kind: str, method: str | None, needs_teacher: bool = False,
                     settings: type = NoSettings, train: dict | None = None,
                     load_filter: Callable[[Any, dict], InputFilter] | None = None,
                     starts_from_victim: bool = True) -> Callable:
    """Decorator for a defense's run function: declares it and adds it to the registry.

    A repair defense's run writes a model to the job's `model/`; an input filter's run calibrates the
    filter and saves it with `write_filter`, and `load_filter` rebuilds it for evaluation.
    """
    if kind not in KINDS:
        raise ValueError(f"defense {name}: kind must be one of {KINDS}; got {kind!r}")
    if (kind == "input-filter") != (load_filter is not None):
        raise ValueError(f"defense {name}: an input filter, and only one, declares load_filter")
    if method not in METHODS:
        raise ValueError(f"defense {name}: method must be one of {METHODS}; got {method!r}")
    if method in ("lora", "full") and (train or {}).get("method", method) != method:
        raise ValueError(f"defense {name}: its recipe's train.method contradicts method={method}")

    def wrap(fn: Callable[["DefenseJob"], dict]) -> Callable[["DefenseJob"], dict]:
        recipe = {**(train or {}), **({"method": method} if method in ("lora", "full") else {})}
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        DEFENSES.add(name, DefenseSpec(name, kind, fn, method, needs_teacher, settings, recipe, summary, load_filter,
                                       starts_from_victim),
                     aliases)
        return fn

    return wrap


@dataclass(frozen=True)
class Resolved:
    """A configured defense checked against its declaration: the config, its spec, settings and full recipe."""

    cfg: DefenseConfig
    spec: DefenseSpec
    settings: Any
    train: TrainConfig

    def key(self) -> dict:
        """What the defense runs with, for stage keys: its name and, of its settings and its full recipe,
        those that differ from the classes' defaults (a new setting with a default keeps keys)."""
        return {"name": self.spec.name, "settings": changed_settings(self.settings),
                "train": changed_settings(self.train)}


def resolve(cfg: DefenseConfig, where: str | None = None) -> Resolved:
    """Check `cfg` against its defense: known name, its own settings only, a recipe whose method fits.

    The recipe is the defense's own `train` defaults with the config's keys over them, so no defense
    inherits another's (a bare `{name: full-ft}` fine-tunes at full-ft's learning rate). `where` names
    the config entry in messages (e.g. "defenses.1"); default "defense <label>".
    """
    spec = DEFENSES.get(cfg.name)
    where = where or f"defense {cfg.row_name}"
    valid = [f.name for f in dataclasses.fields(spec.settings)]
    unknown = sorted(set(cfg.settings) - set(valid))
    if unknown:
        takes = (f"takes {', '.join(valid)} beside name, label, seed and train" if valid
                 else "has no settings of its own (only name, label, seed and train)")
        raise UserError(f"unknown setting {', '.join(f'{where}.{k}' for k in unknown)}; {spec.name} {takes}")
    settings = from_dict(spec.settings, dict(cfg.settings), where)
    train = from_dict(TrainConfig, merge_dicts(spec.train, cfg.train), f"{where}.train")
    if spec.method in ("lora", "full") and train.method != spec.method:
        raise UserError(f"{where}: {spec.name} fine-tunes with train.method={spec.method}; the config says "
                        f"train.method={train.method} (remove it, or choose a defense that does that)")
    return Resolved(cfg, spec, settings, train)


def check_defenses(defenses: list[DefenseConfig]) -> list[Resolved]:
    """resolve() every configured defense, naming each by its place in the list; none may take the name
    of one of the report's own rows (rundir.RESERVED_ROWS)."""
    for i, d in enumerate(defenses):
        if d.row_name in RESERVED_ROWS:
            raise UserError(f"defenses.{i}: {d.row_name!r} names one of the report's own rows or their eval/ "
                            f"folders ({', '.join(RESERVED_ROWS)}); give this defense another label")
    return [resolve(d, f"defenses.{i}") for i, d in enumerate(defenses)]


@dataclass(frozen=True)
class DefenseJob:
    """Everything a defense needs: the poisoned student, the teacher, clean data, where to write."""

    student: str  # a run folder, checkpoint folder or hub id of the poisoned classifier
    teacher: str | None  # a saved teacher folder (defenses that declare needs_teacher)
    splits: Splits  # CLEAN data: the defender never sees the trigger
    cfg: DefenseConfig
    rt: Runtime
    out_dir: Path
    seed: int
    diagnostics: Diagnostics | None = None  # e.g. a trigger probe logged per evaluation (never selects)
    resolved: Resolved | None = None  # `cfg` checked against its defense; None: resolved here, once

    def __post_init__(self) -> None:
        if self.resolved is None:
            object.__setattr__(self, "resolved", resolve(self.cfg))

    @property
    def settings(self) -> Any:
        """The defense's own settings (its settings dataclass)."""
        return self.resolved.settings

    @property
    def train(self) -> TrainConfig:
        """The defense's full fine-tuning recipe."""
        return self.resolved.train


def run_defense(job: DefenseJob) -> DefenseResult:
    """Run the configured defense and record its metrics.json, once."""
    r = job.resolved
    if r.spec.needs_teacher and not job.teacher:
        raise UserError(f"{r.spec.name} needs a trained teacher (run `w2sdefense teacher`, then pass --teacher)")
    start = time.perf_counter()
    metrics = r.spec.run(job)
    metrics.update(defense=r.spec.name, seed=job.seed, settings=to_dict(r.settings))
    return record_stage("defense", metrics, start, job.out_dir, job.rt, DefenseResult)


def prepare(job: DefenseJob, modify: Callable | None = None):
    """The poisoned student ready for the defense's fine-tuning (LoRA adapter or full), seeded; `modify`
    changes its weights in place first (see train.job.prepare_student)."""
    return prepare_student(job.student, job.splits.num_labels, job.train, job.rt, job.out_dir, job.seed, modify)


def fine_tune(job: DefenseJob, student, rows: list | None = None, **kwargs) -> dict:
    """The shared fine-tuning loop on the defender's clean rows (the first train.max_train_rows), or on `rows`
    as given (a defense that adds texts of its own, e.g. unlabelled ones)."""
    splits, train = job.splits, job.train
    if rows is not None:
        splits, train = dataclasses.replace(splits, train=rows), dataclasses.replace(train, max_train_rows=None)
    return train_classifier(student, splits, train, job.rt, job.out_dir, job.seed,
                            desc=job.cfg.row_name, diagnostics=job.diagnostics, **kwargs)


def open_filter(path: str | Path) -> tuple[InputFilter, dict]:
    """A saved input filter (a filter run folder) and its record (defense, student, settings, state)."""
    record = read_filter(path)
    spec = DEFENSES.get(record.get("defense", "?"))
    if spec.load_filter is None:
        raise UserError(f"{path}: {spec.name} is not an input filter")
    settings = from_dict(spec.settings, record.get("settings") or {}, f"{path} settings")
    return spec.load_filter(settings, record.get("state") or {}), record
