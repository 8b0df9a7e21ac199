"""`w2sdefense clean`: the practitioner's one command. A suspect classifier and clean data in; a standalone
cleaned model (`DIR/model/`, plain weights, tokenizer and a model card, no PEFT needed: ready to push to a hub)
and a report out.

Stages, each re-used when it finished with the same inputs (as in `run`), an unfinished one continued:
the teacher (only for a defense that needs one), the defense, the merged model, and the evaluation of
the suspect and of the cleaned model on the clean test split: clean accuracy and, per candidate trigger,
its ASR-cc (the share of test rows of other labels, classified correctly without the trigger, that the
trigger sends to the label). The defender does not know the target, so without `target_label` every
label is measured and the highest reported.

The model folder holds only what is shipped: its stage records lie beside it (rundir.shipped_records), and a file
a user adds there (a model card of their own, notes) is never deleted: a run that would replace it refuses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from w2sdefense.attacks.base import triggered_rows
from w2sdefense.config import CleanJob, DefenseConfig, dump_yaml, to_dict
from w2sdefense.config.jobs import AUTO_DEFENSE
from w2sdefense.data.datasets import data_inputs, dataset_files, load_splits
from w2sdefense.data.loading import read_texts
from w2sdefense.data.records import UNLABELLED, Example, Splits
from w2sdefense.defenses import DEFENSES, DefenseJob, resolve, run_defense
from w2sdefense.defenses.base import Resolved
from w2sdefense.defenses.evidence import default_reason, evidence_lines, measured_default
from w2sdefense.defenses.recipes import CLEAN_BUDGET
from w2sdefense.defenses.teacher import run_teacher
from w2sdefense.errors import UserError
from w2sdefense.eval.clean_report import write_report
from w2sdefense.eval.metrics import accuracy
from w2sdefense.eval.triggers import measure_toward, transform_file, transform_table
from w2sdefense.eval.report import environment
from w2sdefense.fileio import atomic_write_text
from w2sdefense.models import check_model_name, load_classifier
from w2sdefense.models.loading import declared_base, label_names, merge_adapter, resolve_model_path
from w2sdefense.models.predict import classify_rows
from w2sdefense.models.truncation import cut_by_tokens
from w2sdefense.stages import STAGE_FILE, Stage
from w2sdefense.results import TRANSFORM, CleanEvaluation, CleanReport, DefenseResult, is_transform, write_result
from w2sdefense.rundir import (CONFIG_FILE, METRICS_FILE, MODEL_DIR, RUN_LOG, TRIGGERS_FILE, check_card, check_outside_inputs,
                               check_shipped_replaceable, claim_run_dir, log_to, writing_shipped)
from w2sdefense.runtime import Runtime
from w2sdefense.train.job import limit



# what a reset keeps of the suspect, the settings and the options that set them (only a reset toward the base reads them)
RESET_OPTIONS = {"head": "--fresh-head", "tokenizer": "--base-tokenizer"}


def choose_defense(job: CleanJob) -> DefenseConfig:
    """The defense `clean` runs: the one named, else the measured default for what the user gave
    (evidence.measured_default: today, with the Gemma package and a suspect no larger than Gemma-3-270M,
    distill-into Gemma, base or not, on the rows and unlabelled texts where given, else on the rows alone; else with
    the base, reset-distill given texts and the full reset without; without a base, W2SDefense; the base with a
    reset's options, --fresh-head or --base-tokenizer, chooses among the resets); settings given without a name tune
    that default. A base given to a named defense that does not take one is refused; the measured default that reads
    none runs without it. It trains on every clean row the user gave, for the step budget the realistic benchmark
    measured (recipes.CLEAN_BUDGET), with the train keys the default was measured with (Measured.train) over that,
    unless the user's train keys say otherwise."""
    job = with_settings_base(job)
    d = job.defense or DefenseConfig(name=AUTO_DEFENSE)
    auto = d.name == AUTO_DEFENSE
    if auto:
        chosen = measured_default(bool(job.base_model), unlabelled=job.unlabelled is not None, suspect=job.model,
                                  resets=_asks_reset(job))
        d = dataclasses.replace(d, name=chosen.defense, settings={**chosen.settings, **d.settings},
                                train={**(chosen.train or {}), **d.train})
    takes = {f.name for f in dataclasses.fields(DEFENSES.get(d.name).settings)}
    takes_base = "base_model" in takes
    if auto and not takes_base:
        job = dataclasses.replace(job, base_model=None)  # the measured default reads no base (its report says so)
    resets = takes_base and bool(job.base_model or d.settings.get("base_model"))
    for key, flag in RESET_OPTIONS.items():
        if key in d.settings and not resets:
            raise UserError(f"{flag} (defense.{key}) changes what a reset toward the public base keeps, but {d.name} "
                            "resets nothing; give --base (the default then resets), or choose fine-mixing or "
                            "reset-distill")
    if job.base_model and not takes_base:
        raise UserError(f"--base was given, but {d.name} does not use a public base (it would be recorded and "
                        "ignored); drop --base, or choose a defense that resets toward it (fine-mixing, "
                        "reset-distill, w2sdefense)")
    if job.base_model and "base_model" not in d.settings:
        d = dataclasses.replace(d, settings={**d.settings, "base_model": job.base_model})
    return dataclasses.replace(d, train={**CLEAN_BUDGET, **d.train})  # every row, the measured step budget


def _why(job: CleanJob) -> str | None:
    """Why the default ran, when the user named no defense."""
    if job.defense is not None and job.defense.name != AUTO_DEFENSE:
        return None
    base_known, unlabelled, resets = bool(job.base_model), job.unlabelled is not None, _asks_reset(job)
    chosen = measured_default(base_known, unlabelled=unlabelled, suspect=job.model, resets=resets)
    return default_reason(chosen, base_known, unlabelled=unlabelled, suspect=job.model, resets=resets)


def _asks_reset(job: CleanJob) -> bool:
    """Whether the user gave the base with a reset's options (--fresh-head, --base-tokenizer) and no defense: the
    default is then chosen among the defenses that reset toward the base."""
    settings = job.defense.settings if job.defense is not None else {}
    return bool(job.base_model) and any(key in settings for key in RESET_OPTIONS)


def with_settings_base(job: CleanJob) -> CleanJob:
    """`job` with a base given as `--set defense.base_model=X` (and no --base) taken as --base, so the default, the
    reset options and the report treat it alike."""
    given = job.defense.settings.get("base_model") if job.defense is not None else None
    return dataclasses.replace(job, base_model=given) if given and not job.base_model else job


def with_declared_base(job: CleanJob) -> tuple[CleanJob, str | None]:
    """`job` with the base the suspect names (its adapter, config.json or model card) when no --base was given and
    the default defense runs, and where it was named; as it is otherwise."""
    if job.base_model or (job.defense is not None and job.defense.name != AUTO_DEFENSE):
        return job, None
    found = declared_base(job.model)
    if found is None:
        return job, None
    return dataclasses.replace(job, base_model=found[0]), found[1]


def with_unlabelled(splits: Splits, path: str | None, text_field: str | None) -> Splits:
    """`splits` with the texts of an unlabelled file as `unlabelled`, their ids after every labelled row's so
    none collides."""
    if path is None:
        return splits
    texts = read_texts(path, text_field)
    start = 1 + max(e.idx for e in splits.train + splits.dev + splits.test)
    rows = [Example(t, UNLABELLED, start + i, where=f"{path} text {i + 1}") for i, t in enumerate(texts)]
    return dataclasses.replace(splits, unlabelled=rows)


def read_triggers(path: Path) -> list[str]:
    """A triggers file: one candidate per line; blank lines and lines starting with # are skipped. A folder
    written by `w2sdefense scan` stands for its triggers.txt."""
    if path.is_dir() and (path / TRIGGERS_FILE).is_file():
        path = path / TRIGGERS_FILE
    elif path.is_dir():
        raise UserError(f"{path} is a folder, not a triggers file (one trigger a line), and holds no {TRIGGERS_FILE} "
                        "(a folder written by `w2sdefense scan` does); give the file itself")
    if not path.is_file():
        raise UserError(f"triggers file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a triggers file holds one trigger a line)") from None
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line and not line.startswith("#")]
    if not found:
        raise UserError(f"{path} holds no trigger (one per line; # starts a comment)")
    return found


def model_fingerprint(name: str) -> object:
    """What identifies the suspect for re-use: its name and, for a local folder, its files' sizes and times."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    folder = Path(resolve_model_path(name))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAGE_FILE)
    return [str(path.resolve()), [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def file_fingerprint(name: str) -> list:
    """What identifies an input file for re-use: its path, size and modification time."""
    path = Path(name).expanduser()
    return [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]


def run_clean(job: CleanJob, out: Path, rt: Runtime, overwrite: bool = False,
              config_file: Path | None = None) -> CleanReport:
    """Every stage of `clean` in `out` (finished ones re-used); writes report.json and report.md."""
    if not job.model:
        raise UserError("clean needs --model (the suspect classifier)")
    job, base_source = with_declared_base(with_settings_base(job))
    defense = choose_defense(job)
    resolved = resolve(defense, "defense")  # an unknown defense or setting fails before any work
    spec = resolved.spec
    if spec.kind != "repair":
        raise UserError(f"{spec.name} is an input filter: it leaves the model as it is, so there is no cleaned "
                        "model to write; `w2sdefense defend` calibrates it, `evaluate` measures it")
    for name in filter(None, (job.model, job.base_model)):
        check_model_name(name)
    if not (job.data.dataset or job.data.hub or job.data.train_file):
        raise UserError("clean needs --data: the defender's own clean data (a folder with train/dev/test files or "
                        "a dataset name); the cleaned model is trained and measured on it")
    splits = with_unlabelled(load_splits(job.data), job.unlabelled, job.data.text_field)
    if job.target_label is not None and job.target_label >= splits.num_labels:
        raise UserError(f"--target-label {job.target_label} is not a label of the data (labels 0..{splits.num_labels - 1})")
    for trigger in filter(is_transform, job.triggers):
        transform_table(job.data, trigger, "test")  # a paraphrase candidate without its file fails before any work
    models = {"--model": job.model, "--base": job.base_model, "teacher model": job.teacher.model}
    check_outside_inputs(out, {**data_inputs(job.data), **models, "config file": config_file,
                               "unlabelled texts": job.unlabelled})
    with claim_run_dir(out, overwrite, rt.accelerator, stage_file=STAGE_FILE, command="clean") as folder:
        stages = plan_stages(job, resolved, folder)
        check_model_folder(stages.model)  # before any work: a refusal never comes after a long defense
        if not overwrite:
            check_same_model(folder, stages.model, dump_yaml(job))
        if rt.is_main:
            atomic_write_text(folder / CONFIG_FILE, dump_yaml(job))
        with log_to(folder / RUN_LOG, rt.is_main):
            report = dataclasses.replace(_stages(job, resolved, splits, stages, rt), base_source=base_source,
                                         default_reason=_why(job),
                                         evidence=evidence_lines(resolved.cfg.name, resolved.cfg.settings,
                                                                 texts=job.unlabelled is not None,
                                                                 train=defense.train))
        if rt.is_main:
            write_report(folder, report)
        rt.accelerator.wait_for_everyone()
    return report


def input_files(job: CleanJob) -> list:
    """What identifies `clean`'s inputs beyond their names: the data's split files and the base's files, so a file
    changed in place makes its stages run again instead of reporting old numbers."""
    try:
        files = dataset_files(job.data)
    except UserError:  # a hub dataset: its name and revision are what identify it
        files = {}
    found = [[split, *file_fingerprint(str(path))] for split, path in sorted(files.items())]
    # a paraphrase candidate's file (absent: the keys as before)
    found += [[t, *file_fingerprint(str(transform_file(job.data, t.removeprefix(TRANSFORM), "test")))]
              for t in job.triggers if is_transform(t)]
    return found + ([model_fingerprint(job.base_model)] if job.base_model else [])


@dataclass(frozen=True)
class CleanStages:
    """`clean`'s stages in their run folder, keyed before any of them runs."""

    teacher: Stage | None  # only for a defense that needs one
    defense: Stage
    model: Stage  # the merged, standalone model: shipped, so its records lie beside it
    before: Stage  # the suspect measured
    after: Stage  # the cleaned model measured


def plan_stages(job: CleanJob, resolved: Resolved, out: Path) -> CleanStages:
    """Every stage of `clean` in `out` and the key of its inputs."""
    suspect = model_fingerprint(job.model)
    texts = () if job.unlabelled is None else (file_fingerprint(job.unlabelled),)  # absent: the keys as before
    data = (job.data, input_files(job))
    teacher = (Stage.of("teacher", out / "teacher", *data, job.teacher, suspect, job.seed, *texts)
               if resolved.spec.needs_teacher else None)
    defense = Stage.of(f"defense {resolved.cfg.row_name}", out / "defense", suspect, teacher and teacher.key,
                       resolved.key(), *data, job.seed, *texts)
    model = Stage.of("model (merged, standalone)", out / MODEL_DIR, defense.key, shipped=True)
    measure = (job.triggers, job.target_label, job.eval, *data, job.seed)
    return CleanStages(teacher, defense, model,
                       before=Stage.of("evaluate the suspect", out / "eval" / "before", suspect, *measure),
                       after=Stage.of("evaluate the cleaned model", out / "eval" / "after", model.key, *measure))


def check_same_model(folder: Path, model: Stage, settings: str) -> None:
    """Refuse to replace a cleaned model made with other settings, naming them (--overwrite replaces it); where the
    settings are the same but the model's inputs are not (a file changed in place, another version's default), say
    in one line that it is made again."""
    marker = model.records / STAGE_FILE
    if not marker.is_file() or json.loads(marker.read_text()).get("key") == model.key:
        return
    old_file = folder / CONFIG_FILE
    old = yaml.safe_load(old_file.read_text(encoding="utf-8")) if old_file.is_file() else {}
    changed = changed_keys(old if isinstance(old, dict) else {}, yaml.safe_load(settings))
    if changed:
        raise UserError(f"{folder} holds a cleaned model made with other settings ({', '.join(changed[:4])}"
                        f"{', ...' if len(changed) > 4 else ''}): --overwrite replaces it, or give another --out")
    print(f"{folder}: its cleaned model was made from other inputs (a suspect, data or base file changed in place, or "
          "another version's defaults): it is made again", file=sys.stderr, flush=True)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings (present in only one of them included)."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def check_model_folder(model: Stage) -> None:
    """Refuse what this run would write over in the shipped model folder: when the model is made anew (the folder is
    replaced whole), any file the tool did not write; always, a README.md that is not the tool's card (rewritten with
    every report)."""
    if not model.finished():
        check_shipped_replaceable(model.folder)
    check_card(model.folder)


def _stages(job: CleanJob, resolved: Resolved, splits: Splits, stages: CleanStages, rt: Runtime) -> CleanReport:
    teacher, stage, merged = stages.teacher, stages.defense, stages.model
    if teacher:
        teacher.run(rt, lambda: run_teacher(job.teacher, splits, job.model, rt, teacher.folder, job.seed))
    trained = stage.run(rt, lambda: run_defense(DefenseJob(
        student=job.model, teacher=str(teacher.folder / MODEL_DIR) if teacher else None, splits=splits,
        cfg=resolved.cfg, rt=rt, out_dir=stage.folder, seed=job.seed, resolved=resolved)), DefenseResult)
    merged.run(rt, lambda: _merge(stage.folder / MODEL_DIR, merged.folder, splits.num_labels, rt))
    measured = {}
    for name, evaluation, model in (("before", stages.before, job.model), ("after", stages.after, str(merged.folder))):
        measured[name] = evaluation.run(rt, lambda e=evaluation, m=model: _evaluate(m, job, splits, e.folder, rt),
                                        CleanEvaluation).result
    reset = {k: v for k, v in trained.result.details.items() if k.startswith(("reset_", "suspect_base_"))}
    return CleanReport(model=job.model, base_model=job.base_model, defense=to_dict(resolved.cfg),
                       defense_stage_time_s=trained.wall_time_s, selected_step=trained.result.selected_step,
                       before=measured["before"], after=measured["after"], cleaned_model=str(merged.folder),
                       environment=environment(), label_names=label_names(job.model), reset=reset or None,
                       train_rows=len(limit(splits.train, resolved.train.max_train_rows)), steps=trained.result.steps)


def _merge(trained: Path, out: Path, num_labels: int, rt: Runtime) -> dict:
    """The defense's model as plain weights: an adapter folded into its base, full weights saved as they are. The
    folder is written whole and swapped in, its file names recorded as the tool's (writing_shipped)."""
    if rt.is_main:
        with writing_shipped(out) as folder:
            merge_adapter(trained, folder, num_labels, rt.dtype)
    rt.accelerator.wait_for_everyone()
    return {}


def _evaluate(model: str, job: CleanJob, splits: Splits, folder: Path, rt: Runtime) -> CleanEvaluation:
    """CA on the clean test split and, per candidate trigger, its ASR-cc toward each label."""
    clf = load_classifier(model, splits.num_labels, rt.dtype)
    test, cfg = splits.test, job.eval
    clean = classify_rows(clf, test, cfg.max_length, cfg.batch_size, rt, "clean test")
    labels, idx = [e.label for e in test], [e.idx for e in test]
    ca = accuracy(clean.argmax(-1).tolist(), labels)  # plain accuracy: no triggered set, so no ASR warning
    measured = []
    targets = range(splits.num_labels) if job.target_label is None else [job.target_label]
    for trigger in job.triggers:
        # the same positions before and after; a transform: the test rows' paraphrases, nothing inserted, nothing cut
        table = transform_table(job.data, trigger, "test") if is_transform(trigger) else None
        triggered = triggered_rows(test, trigger, job.seed, table)
        # Counted (and warned about past 1 %) as `evaluate` does: a cut trigger is a row the model never saw.
        cut = None if table is not None else cut_by_tokens(clf.tokenizer, triggered, cfg.max_length,
                                                           f"trigger {trigger[:20]!r}")[1].cut
        logits = classify_rows(clf, triggered, cfg.max_length, cfg.batch_size, rt, f"with {trigger[:20]!r}")
        m = measure_toward(trigger, clean, labels, idx, logits, targets, [e.label for e in triggered],
                           [e.idx for e in triggered])
        measured.append(dataclasses.replace(m, trigger_cut=cut))
    result = CleanEvaluation(clean_accuracy=ca, clean_total=len(test), triggers=measured)
    return write_result(folder / METRICS_FILE, result, rt.is_main)
