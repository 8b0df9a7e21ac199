"""The Python API: the commands as functions with typed results. The command line's `poison`, `train`, `teacher`,
`defend` and `evaluate` call these functions (`clean`, `scan` and `run` the same workflows as theirs), so a function
and its command do the same work and refuse the same inputs in the same words.

    from w2sdefense import poison_data, train_model, defend_model, evaluate_model
    poisoned = poison_data("sst2", "runs/poison", attack="badnet", count=50)
    train_model("smollm2-135m", poisoned.folder, "runs/victim", settings=["train.method=lora"])
    defend_model("runs/victim", "sst2", "runs/defended", defense="lora-ft")
    print(evaluate_model("runs/defended", poisoned.folder).attack_success_rate_clean_correct)

The researcher's stages: `poison_data`, `train_model`, `train_teacher`, `defend_model`, `evaluate_model` (the
`poison`, `train`, `teacher`, `defend` and `evaluate` commands) and `run_config` (`run`). The practitioner's:
`clean_model` and `scan_model` (`clean` and `scan`; `w2sdefense.clean` and `w2sdefense.scan` are the modules behind
them):

    found = scan_model("path/to/suspect", "path/to/clean-data", "runs/scan", base="smollm2-135m")
    report = clean_model("path/to/suspect", "path/to/clean-data", "runs/cleaned", base="smollm2-135m",
                         triggers=found.triggers[:3])
    print(report.after.clean_accuracy, report.after.triggers[0].asr_cc)

A model is a name or a folder (anything `--model` takes) or an in-memory `(PreTrainedModel, tokenizer)` pair; data
is a name or a folder (anything `--data` takes) or in memory: a `datasets.DatasetDict` or a mapping of split name to
rows (`{"train": [{"text": ..., "label": ...}, ...], "dev": ..., "test": ...}`). In-memory inputs are written to a
temporary folder for the run and removed after it. None, where a command's option may be left out, takes the
config's value. `config`, where a function takes one, is a YAML file of the command's settings (`--config`);
`settings` are dotted overrides as `--set` takes them (e.g. "train.lr=5e-4"), applied last. Quiet by default: no progress bars, no library warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from w2sdefense.config import (CleanJob, DefendJob, EvaluateJob, ExperimentConfig, PoisonJob, ScanJob, TeacherJob,
                               TrainJob, build_job, read_yaml)
from w2sdefense.errors import UserError
from w2sdefense.progress import quiet_libraries, silenced
from w2sdefense.results import (CleanReport, DefenseResult, EvaluationResult, ExperimentReport, PoisonResult,
                                ScanReport, TrainingResult, read_report, read_result)

if TYPE_CHECKING:
    from w2sdefense.runtime import Runtime

Model = Any  # a name or folder (str, Path), or a (PreTrainedModel, tokenizer) pair
Data = Any  # a name or folder (str, Path), a datasets.DatasetDict, or {split: rows}
File = str | Path | None  # a file or folder; None: none (or the config's)
SPLITS = ("train", "dev", "test")


def poison_data(data: Data, out: str | Path, *, attack: str | None = None, target_label: int | None = None,
                count: int | None = None, rate: float | None = None, mode: str | None = None,
                selection: str | None = None, data_dir: File = None, config: File = None,
                settings: Iterable[str] = (), overwrite: bool = False, quiet: bool = True) -> PoisonResult:
    """`w2sdefense poison`: `attack`'s trigger in `count` (or a `rate` of) `data`'s training rows and in its
    non-target test rows; returns the poison folder `out` and its poison.json."""
    if count is not None and rate is not None:
        raise UserError("give one of --count and --rate, not both")
    options = {"target_label": target_label, "count": count, "rate": rate, "mode": mode, "selection": selection}
    # As overrides (before `settings`, which win), so a rate clears a count from the config file and vice versa.
    first = [f"poison.{key}={value}" for key, value in options.items() if value is not None]
    with _inputs(None, data) as (_, data_name), _quiet(quiet):
        from w2sdefense.attacks.poison import poison_dataset
        from w2sdefense.data.datasets import data_inputs
        from w2sdefense.data.poisoned import META_FILE
        from w2sdefense.rundir import check_outside_inputs, claim_run_dir

        flags = {"data.dataset": data_name, "attack.name": attack, "data.data_dir": _text(data_dir)}
        job = _job(PoisonJob, flags, settings, config, first)
        check_outside_inputs(out, {**data_inputs(job.data), "config file": config})
        with claim_run_dir(out, overwrite) as folder:
            poison_dataset(job.data, job.attack, job.poison, job.seed, folder, overwrite)
    return dataclasses.replace(read_result(PoisonResult, folder / META_FILE), folder=folder)


def train_model(model: Model, data: Data, out: str | Path, *, data_dir: File = None, config: File = None,
                settings: Iterable[str] = (), overwrite: bool = False, resume: bool = False,
                quiet: bool = True) -> TrainingResult:
    """`w2sdefense train`: fine-tune `model` (full or LoRA: train.method) on `data`, a dataset or a poison folder;
    the model and metrics.json land in `out` (an unfinished run there is continued; `resume`: it must be)."""
    with _inputs(model, data) as (model_name, data_name), _quiet(quiet):
        from w2sdefense.train.job import run_train

        flags = {"data.dataset": data_name, "model": model_name, "data.data_dir": _text(data_dir)}
        job = _job(TrainJob, flags, settings, config)
        splits = _checked_splits(job, job.model)
        with _training_run(out, job, {"--model": job.model}, config, overwrite, resume) as (folder, rt):
            return run_train(job.model, splits, job.train, rt, folder, job.seed)


def train_teacher(student: Model, data: Data, out: str | Path, *, model: Model = None, data_dir: File = None,
                  config: File = None, settings: Iterable[str] = (), overwrite: bool = False, resume: bool = False,
                  quiet: bool = True) -> TrainingResult:
    """`w2sdefense teacher`: fully fine-tune the small clean teacher `model` (default minilm-l6) on `data`, with a
    projection head to `student`'s width (its feature_dim); the teacher and metrics.json land in `out`."""
    with _inputs(student, data, model) as (student_name, data_name, model_name), _quiet(quiet):
        from w2sdefense.defenses.teacher import run_teacher

        flags = {"data.dataset": data_name, "student": student_name, "teacher.model": model_name,
                 "data.data_dir": _text(data_dir)}
        job = _job(TeacherJob, flags, settings, config)
        splits = _checked_splits(job, job.student, job.teacher.model)
        models = {"--student": job.student, "--model": job.teacher.model}
        with _training_run(out, job, models, config, overwrite, resume) as (folder, rt):
            return run_teacher(job.teacher, splits, job.student, rt, folder, job.seed)


def defend_model(student: Model, data: Data, out: str | Path, *, defense: str | None = None, teacher: File = None,
                 data_dir: File = None, config: File = None, settings: Iterable[str] = (), overwrite: bool = False,
                 resume: bool = False, quiet: bool = True) -> DefenseResult:
    """`w2sdefense defend`: defend the poisoned `student` with clean `data` only, by `defense` (default w2sdefense,
    which needs a `teacher` folder); a repair's model lands in OUT/model/, a filter is calibrated in `out`."""
    with _inputs(student, data) as (student_name, data_name), _quiet(quiet):
        from w2sdefense.defenses import DefenseJob, resolve, run_defense

        flags = {"student": student_name, "teacher": _text(teacher), "defense.name": defense,
                 "data.dataset": data_name, "data.data_dir": _text(data_dir)}
        job = _job(DefendJob, flags, settings, config)
        if not job.student:
            raise UserError("defend needs --student (the poisoned model)")
        resolved = resolve(job.defense)  # unknown names and settings fail before any work, once
        spec = resolved.spec
        if spec.needs_teacher and not job.teacher:
            raise UserError(f"{spec.name} needs a trained teacher: run `w2sdefense teacher`, then pass --teacher")
        splits = _checked_splits(job, job.student)
        if spec.needs_teacher:
            from w2sdefense.models.teacher import check_teacher_labels

            check_teacher_labels(job.teacher, splits.num_labels, job.student)  # before the run folder
        models = {"--student": job.student, "--teacher": job.teacher}
        with _training_run(out, job, models, config, overwrite, resume) as (folder, rt):
            return run_defense(DefenseJob(job.student, job.teacher, splits, job.defense, rt, folder, job.seed,
                                          resolved=resolved))


def evaluate_model(model: Model, poison_folder: str | Path, *, out: File = None, config: File = None,
                   settings: Iterable[str] = (), overwrite: bool = False, quiet: bool = True) -> EvaluationResult:
    """`w2sdefense evaluate`: clean accuracy and attack success rate of `model` (a run folder: a teacher's measured
    with its own head, a filter's as the model behind it) on a poison folder's test sets; written to the JSON
    file `out` when given."""
    with _inputs(model, None) as (model_name, _), _quiet(quiet):
        from w2sdefense.data.poisoned import check_test_sets
        from w2sdefense.defenses import open_filter
        from w2sdefense.defenses.filtering import models_read
        from w2sdefense.eval.stage import evaluate_stage
        from w2sdefense.rundir import check_output_file, check_outside_inputs, check_outside_models
        from w2sdefense.runtime import make_runtime

        if model_name is None:
            raise UserError("evaluate needs a model: a name, a folder or a (PreTrainedModel, tokenizer) pair")
        if out is not None:  # before any work: a refused out must not cost a whole evaluation
            check_outside_inputs(out, {"--data": poison_folder, "config file": config})
            check_output_file(out, overwrite)
            # A metrics file may go beside the model it measures (run/eval.json), never into its weights.
            check_outside_models(out, models_read(model_name))
        job = _job(EvaluateJob, {}, settings, config)
        check_test_sets(poison_folder)
        rt = make_runtime(job.runtime)
        return evaluate_stage(model_name, poison_folder, job.eval, rt, _path(out), open_filter, name_inputs=True)


def clean_model(model: Model, data: Data, out: str | Path, *, base: str | None = None, defense: str | None = None,
          triggers: Iterable[str] = (), target_label: int | None = None, unlabelled: str | Path | None = None,
          settings: Iterable[str] = (), overwrite: bool = False, quiet: bool = True) -> CleanReport:
    """`w2sdefense clean`: clean `model` with the defender's `data`; the standalone model lands in OUT/model/.
    `settings`: dotted overrides as `--set` takes them (e.g. "defense.train.lr=5e-4")."""
    with _inputs(model, data) as (model_name, data_name), _quiet(quiet):
        from w2sdefense.clean import run_clean  # the workflows import torch and transformers: only when called
        from w2sdefense.runtime import make_runtime

        flags = {"model": model_name, "base_model": base, "data.dataset": data_name, "unlabelled": _text(unlabelled),
                 "target_label": target_label, "defense.name": defense, "triggers": list(triggers) or None}
        job = _job(CleanJob, flags, settings)
        return run_clean(job, Path(out), make_runtime(job.runtime), overwrite)


def scan_model(model: Model, data: Data, out: str | Path, *, base: str | None = None, settings: Iterable[str] = (),
         overwrite: bool = False, quiet: bool = True) -> ScanReport:
    """`w2sdefense scan`: candidate triggers of `model`, measured on `data`, and a verdict (ScanReport.backdoored)."""
    with _inputs(model, data) as (model_name, data_name), _quiet(quiet):
        from w2sdefense.runtime import make_runtime
        from w2sdefense.scan import run_scan

        job = _job(ScanJob, {"model": model_name, "base_model": base, "data.dataset": data_name}, settings)
        return run_scan(job, Path(out), make_runtime(job.runtime), overwrite)


def run_config(config: str | Path | ExperimentConfig, settings: Iterable[str] = (), overwrite: bool = False,
        quiet: bool = True) -> ExperimentReport:
    """`w2sdefense run`: a whole experiment from a config file (or object); returns its report (report.json's rows
    as results.ReportRow, `by_model()` to find one)."""
    from w2sdefense.pipeline import run_experiment

    cfg = config if isinstance(config, ExperimentConfig) else _job(ExperimentConfig, {}, settings, config)
    with _quiet(quiet):
        run_experiment(cfg, overwrite)
    return read_report(cfg.output_dir)


def _job(cls, flags: Mapping[str, Any], settings: Iterable[str], config: File = None, first: Iterable[str] = ()):
    """A job as the command line builds it: the `config` file, then flags (None: unset), then `first` (a command's
    options given as dotted overrides), then dotted `settings`."""
    if isinstance(settings, str):
        raise UserError(f"settings is a list of dotted assignments, e.g. [{settings!r}]; got one text")
    return build_job(cls, read_yaml(config) if config else {}, flags, [*first, *settings])


def _checked_splits(job, *models: str):
    """`job`'s data, loaded once its model names are checked: bad names and data fail before a run folder exists."""
    from w2sdefense.data.datasets import load_splits
    from w2sdefense.models import check_model_name

    for name in models:
        check_model_name(name)
    return load_splits(job.data)


@contextlib.contextmanager
def _training_run(out: str | Path, job, models: Mapping[str, str | None], config: File, overwrite: bool,
                  resume: bool) -> Iterator[tuple[Path, Runtime]]:
    """Claim `out` for `job` (refusing a folder that overlaps its data, `models` or the config file), logging to its
    train.log; yields the folder and the runtime."""
    from w2sdefense.data.datasets import data_inputs
    from w2sdefense.rundir import TRAIN_LOG, log_to
    from w2sdefense.runtime import make_runtime
    from w2sdefense.train.resume import claim_output

    rt = make_runtime(job.runtime)
    inputs = {**data_inputs(job.data), **models, "config file": config}
    with (claim_output(Path(out), overwrite, resume, job, rt, inputs) as folder,
          log_to(folder / TRAIN_LOG, rt.is_main)):
        yield folder, rt


def _text(path: File) -> str | None:
    return None if path is None else str(path)


def _path(path: File) -> Path | None:
    return None if path is None else Path(path)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    quiet_libraries()
    with silenced():
        yield


@contextlib.contextmanager
def _inputs(model: Model, data: Data, *more: Model) -> Iterator[tuple[str | None, ...]]:
    """Names for `model`, `data` and `more` models: as given when they are names, paths or None (unset), else a
    temporary folder written for the run (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="w2sdefense-") as tmp:
        models = [_model_name(m, Path(tmp) / f"model{i or ''}") for i, m in enumerate((model, *more))]
        yield models[0], _data_name(data, Path(tmp) / "data"), *models[1:]


def _model_name(model: Model, folder: Path) -> str | None:
    if model is None or isinstance(model, (str, Path)):
        return _text(model)
    if isinstance(model, tuple) and len(model) == 2 and hasattr(model[0], "save_pretrained"):
        model[0].save_pretrained(folder)
        model[1].save_pretrained(folder)
        return str(folder)
    raise UserError(f"model must be a name, a folder or a (PreTrainedModel, tokenizer) pair; got {type(model).__name__}")


def _data_name(data: Data, folder: Path) -> str | None:
    if data is None or isinstance(data, (str, Path)):
        return _text(data)
    if not isinstance(data, Mapping) or not set(data) <= set(SPLITS) or "train" not in data:
        raise UserError("data must be a name, a folder, a datasets.DatasetDict or a mapping of train/dev/test to "
                        f"rows with text and label; got {type(data).__name__}")
    folder.mkdir(parents=True)
    for split, rows in data.items():
        lines = (json.dumps(_row(row), ensure_ascii=False) for row in rows)
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(folder)


def _row(row: Any) -> dict:
    """A data row as a plain dict (a datasets row already is one; a dataclass row is converted)."""
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)
