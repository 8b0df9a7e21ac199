"""`w2sdefense run`: poison -> victim -> (clean model) -> teacher -> defenses -> evaluation -> report.

Each stage writes into its own folder (w2sdefense.stages): a rerun re-uses every finished stage whose inputs did
not change and redoes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from w2sdefense.attacks.poison import poison_dataset
from w2sdefense.attacks.base import get_attack
from w2sdefense.data.poisoned import load_poison_folder, relearn_rows, target_label
from w2sdefense.config import ExperimentConfig, TrainConfig, dump_yaml, to_dict
from w2sdefense.data.datasets import data_inputs, load_splits
from w2sdefense.data.defender import defender_splits
from w2sdefense.data.records import Splits
from w2sdefense.defenses import DefenseJob, open_filter, run_defense
from w2sdefense.defenses.base import Resolved, check_defenses
from w2sdefense.defenses.teacher import run_teacher
from w2sdefense.eval.stage import evaluate_stage
from w2sdefense.eval.probe import TriggerProbe, make_probe, probe_diagnostic, start_point, write_curves
from w2sdefense.eval.report import write_report
from w2sdefense.errors import UserError
from w2sdefense.fileio import atomic_write_text
from w2sdefense.models.shape import ConfigUnavailable, base_mismatch
from w2sdefense.results import DefenseResult, EvaluationResult, ReportRow, TrainingResult, stage_result
from w2sdefense.rundir import (CLEAN_ROW, CONFIG_FILE, CURVES_FILE, EVAL_FOLDERS, METRICS_FILE, MODEL_DIR, POISONED_ROW,
                              RUN_LOG, TEACHER_ROW, TRAIN_LOG, check_outside_inputs, claim_run_dir, log_to)
from w2sdefense.runtime import Runtime, make_runtime
from w2sdefense.stages import STAGE_FILE, Ran, Stage
from w2sdefense.train.job import run_train

log = logging.getLogger(__name__)


class Experiment:
    """The stages of one experiment config, run in order with re-use."""

    def __init__(self, cfg: ExperimentConfig, rt: Runtime, defenses: list[Resolved]) -> None:
        self.cfg, self.rt, self.out = cfg, rt, Path(cfg.output_dir)
        self.defenses = defenses  # cfg.defenses, each resolved once (check_defenses), in config order
        self._clean: Splits | None = None
        self._defender: Splits | None = None
        self._probe: dict[Path, TriggerProbe | None] = {}

    def diagnostics(self, poison: Stage):
        """The trigger probe logged during training (a diagnostic: selection never sees it)."""
        if poison.folder not in self._probe:
            data = load_poison_folder(poison.folder)
            self._probe[poison.folder] = make_probe(data.test, data.test_triggered, target_label(poison.folder),
                                                    self.cfg.eval.probe_rows, self.cfg.seed)
        probe = self._probe[poison.folder]
        return probe_diagnostic(probe, self.cfg.eval, self.rt) if probe else None

    def clean_splits(self) -> Splits:
        """The clean splits, loaded once (the defender's and the teacher's data)."""
        if self._clean is None:
            self._clean = load_splits(self.cfg.data)
        return self._clean

    def defender_splits(self) -> Splits:
        """The defender's data (the teacher's and every defense's): the attacker's clean rows, or in the realistic
        protocol (defender.rows) its own draw of rows the attacker never saw."""
        if self._defender is None:
            c = self.cfg
            self._defender = defender_splits(c.data, c.defender, c.seed, self.clean_splits())
        return self._defender

    def defender_key(self) -> tuple:
        """The defender's data in stage keys; empty in the main protocol, so its keys stay as they were."""
        return () if self.cfg.defender.rows is None else (self.cfg.defender,)

    def poison(self) -> Stage:
        """Write the poisoned dataset folder."""
        c = self.cfg
        stage = Stage.of("poison", self.out / "poison", c.data, c.attack, c.poison, c.seed)
        stage.run(self.rt, lambda: self._poison(stage.folder))
        return stage

    def _poison(self, folder: Path) -> dict:
        c = self.cfg
        # poison.json's trigger_cut counts use the victim's max_length as a word budget unless set. Not in the
        # stage key: they are a report, and training and evaluation count again with the tokenizer.
        cfg = dataclasses.replace(c.poison, truncation_words=c.poison.truncation_words or c.victim.train.max_length)
        if self.rt.is_main:
            poison_dataset(c.data, c.attack, cfg, c.seed, folder, overwrite=True)
        self.rt.accelerator.wait_for_everyone()
        return {}

    def victim(self, poison: Stage, clean: bool = False) -> tuple[Stage, Ran]:
        """Train the victim recipe on poisoned data (or, for the reference row, on clean data)."""
        c = self.cfg
        name, upstream = ("clean", c.data) if clean else ("victim", poison.key)
        stage = Stage.of(name, self.out / name, upstream, c.victim, c.seed)

        def work() -> TrainingResult:
            data = self.clean_splits() if clean else _as_splits(load_poison_folder(poison.folder))
            with log_to(stage.folder / TRAIN_LOG, self.rt.is_main):
                result = run_train(c.victim.model, data, c.victim.train, self.rt, stage.folder, c.seed,
                                   diagnostics=self.diagnostics(poison))
            self._curves(result, stage, name)
            return result

        return stage, stage.run(self.rt, work, TrainingResult)

    def teacher(self) -> tuple[Stage, Ran]:
        """Fully fine-tune the small clean teacher, its feature as wide as the student's hidden state."""
        c = self.cfg
        stage = Stage.of("teacher", self.out / "teacher", c.data, c.teacher, c.victim.model, c.seed,
                         *self.defender_key())

        def work() -> TrainingResult:
            with log_to(stage.folder / TRAIN_LOG, self.rt.is_main):
                return run_teacher(c.teacher, self.defender_splits(), c.victim.model, self.rt, stage.folder, c.seed)

        return stage, stage.run(self.rt, work, TrainingResult)

    def _curves(self, result: TrainingResult, stage: Stage, title: str, start_from: Stage | None = None) -> None:
        """curves.png of a training stage; `start_from`: the stage whose kept model it began with (step 0)."""
        if self.rt.is_main:
            began = stage_result(TrainingResult, start_from.folder) if start_from else None
            start = start_point(began) if began else None
            write_curves(result.history or [], stage.folder / CURVES_FILE, f"{self.cfg.name}: {title}",
                         result.selected_step, start=start)

    def defense(self, index: int, victim: Stage, teacher: Stage | None, poison: Stage) -> tuple[Stage, Ran]:
        """Run one configured defense on the poisoned model with clean data."""
        c, r = self.cfg, self.defenses[index]
        d = r.cfg
        teacher_key = teacher.key if (teacher and r.spec.needs_teacher) else None
        # The key holds the settings the defense runs with (its own recipe included), not only the config's.
        stage = Stage.of(f"defense {d.row_name}", self.out / "defenses" / d.row_name, victim.key, teacher_key,
                         r.key(), d.seed, c.data, c.seed, *self.defender_key())

        def work() -> DefenseResult:
            job = DefenseJob(student=str(victim.folder / MODEL_DIR),
                             teacher=str(teacher.folder / MODEL_DIR) if teacher_key else None,
                             splits=self.defender_splits(), cfg=d, rt=self.rt, out_dir=stage.folder,
                             seed=c.seed if d.seed is None else d.seed,
                             diagnostics=self.diagnostics(poison), resolved=r)
            with log_to(stage.folder / TRAIN_LOG, self.rt.is_main):
                result = run_defense(job)
            self._curves(result, stage, d.row_name, start_from=victim if r.spec.starts_from_victim else None)
            return result

        return stage, stage.run(self.rt, work, DefenseResult)

    def relearn(self, label: str, model_stage: Stage, poison: Stage) -> Stage:
        """The re-learning test: `relearn.rows` of the attacker's rows (`relearn.poisoned` of them triggered),
        fine-tuned from `model_stage`'s model with the attack's recipe; its evaluation says whether the backdoor
        comes back."""
        c, r = self.cfg, self.cfg.relearn
        stage = Stage.of(f"relearn {label}", self.out / "relearn" / label, model_stage.key, poison.key, r, c.seed)

        def work() -> TrainingResult:
            data = load_poison_folder(poison.folder)
            rows = relearn_rows(data.train, r.rows, r.poisoned, c.seed)
            splits = Splits(train=rows, dev=data.dev[:r.dev_rows], test=data.test, num_labels=data.num_labels)
            with log_to(stage.folder / TRAIN_LOG, self.rt.is_main):
                return run_train(str(model_stage.folder / MODEL_DIR), splits, r.train, self.rt, stage.folder, c.seed)

        stage.run(self.rt, work, TrainingResult)
        return stage

    def evaluate(self, label: str, model_stage: Stage, poison: Stage) -> tuple[Stage, Ran]:
        """CA and ASR of one stage (a model, the teacher, a filter) on the shared clean and triggered test sets."""
        c = self.cfg
        stage = Stage.of(f"evaluate {label}", self.out / "eval" / label, model_stage.key, poison.key, c.eval)

        def work() -> EvaluationResult:
            return evaluate_stage(model_stage.folder, poison.folder, c.eval, self.rt, stage.folder / METRICS_FILE,
                                  open_filter)

        return stage, stage.run(self.rt, work, EvaluationResult)

    def row(self, name: str, label: str, made: tuple[Stage, Ran], poison: Stage, train: TrainConfig,
            settings: object = None) -> ReportRow:
        """Evaluate the model of `made` (the stage and what it left) into eval/<label> and give its report row: the
        evaluation, the stage's cost, and what it ran with (`train`: its recipe; a defense's `settings`)."""
        stage, trained = made
        evaluated, ran = self.evaluate(label, stage, poison)
        return ReportRow.of(name, ran.result, trained.result, ran.wall_time_s, trained.wall_time_s,
                            stage_key=stage.key, eval_key=evaluated.key, train=to_dict(train),
                            settings=None if settings is None else to_dict(settings))


def _as_splits(data) -> Splits:
    return Splits(train=data.train, dev=data.dev, test=data.test, num_labels=data.num_labels)


def run_experiment(cfg: ExperimentConfig, overwrite: bool = False, rt: Runtime | None = None) -> Path:
    """Run every stage of `cfg` (re-using finished ones) and write report.json and report.md."""
    defenses = check_defenses(cfg.defenses)  # an unknown defense or setting fails before the first stage
    rt = rt or make_runtime(cfg.runtime)
    check_bases(cfg.victim.model, defenses, rt.is_main)  # a base of another model fails before it too
    out = Path(cfg.output_dir)
    models = {"victim model": cfg.victim.model, "teacher model": cfg.teacher.model}
    check_outside_inputs(out, {**data_inputs(cfg.data, missing_ok=True), **models})
    # Locked for the whole run; --overwrite empties only a folder this tool made.
    with claim_run_dir(out, overwrite, rt.accelerator, stage_file=STAGE_FILE, command="run"):
        if rt.is_main:
            atomic_write_text(out / CONFIG_FILE, dump_yaml(cfg))
        exp = Experiment(cfg, rt, defenses)
        with log_to(out / RUN_LOG, rt.is_main):
            rows = _run_stages(exp)
        if rt.is_main:
            write_report(out, cfg.name, rows, to_dict(cfg), describe_experiment(cfg, exp.poison().folder))
        rt.accelerator.wait_for_everyone()
    return out


def describe_experiment(cfg: ExperimentConfig, poison_folder: Path) -> str:
    """What the experiment was, in one line for the report: the attack and its trigger, how many training rows it
    poisoned toward which label, the models, the data's sizes and the seed."""
    counts = json.loads((poison_folder / "poison.json").read_text(encoding="utf-8")).get("counts", {})
    sizes = {split: sum(n.values()) for split, n in counts.get("label_distribution", {}).items()}
    p = cfg.poison
    return (f"The experiment: {get_attack(cfg.attack).describe()}; {counts.get('poisoned', '?')} of "
            f"{sizes.get('train', '?')} training rows poisoned ({p.mode}) toward label {counts.get('target_label', '?')}; "
            f"victim {cfg.victim.model} ({cfg.victim.train.method} fine-tuning), teacher {cfg.teacher.model}; "
            f"{sizes.get('dev', '?')} dev and {sizes.get('test', '?')} test rows; seed {cfg.seed}.")


def check_bases(victim: str, defenses: list[Resolved], say: bool = True) -> None:
    """Every row's `base_model` (an adapter: the base it names) has the victim's family, width, depth and vocabulary,
    read from configs before any stage, so a wrong base fails now, not when its stage comes up hours in. A hub
    config that cannot be read here is said in one line (when `say`); that row's stage checks the weights it loads."""
    for i, r in enumerate(defenses):
        base = getattr(r.settings, "base_model", None)
        if base is None:
            continue
        where = f"defenses.{i} ({r.cfg.row_name})"
        try:
            differs = base_mismatch(base, victim)
        except ConfigUnavailable as exc:
            if say:
                log.warning("note: %s: %s, so its base_model %s is checked against the victim %s only when that "
                            "stage loads them", where, exc, base, victim)
            continue
        if differs:
            raise UserError(f"{where}: base_model {differs}; the victim is fine-tuned from victim.model ({victim}), "
                            "so a reset needs that model or a copy of it")


def _run_stages(exp: Experiment) -> list[ReportRow]:
    """The stage order; returns the report rows."""
    cfg, rows = exp.cfg, []
    poison = exp.poison()
    if cfg.clean_model:
        clean = exp.victim(poison, clean=True)
        rows.append(exp.row(CLEAN_ROW, EVAL_FOLDERS[CLEAN_ROW], clean, poison, cfg.victim.train))
        rows += _relearned(exp, CLEAN_ROW, clean[0], poison)
    victim = exp.victim(poison)
    rows.append(exp.row(POISONED_ROW, EVAL_FOLDERS[POISONED_ROW], victim, poison, cfg.victim.train))
    teacher = exp.teacher() if any(r.spec.needs_teacher for r in exp.defenses) else None
    if teacher:
        rows.append(exp.row(TEACHER_ROW, EVAL_FOLDERS[TEACHER_ROW], teacher, poison, cfg.teacher.train))
    for i, (d, r) in enumerate(zip(cfg.defenses, exp.defenses)):
        defended = exp.defense(i, victim[0], teacher[0] if teacher else None, poison)
        rows.append(exp.row(d.row_name, d.row_name, defended, poison, r.train, r.settings))
        if r.spec.kind == "repair":
            rows += _relearned(exp, d.row_name, defended[0], poison)
    return rows


def _relearned(exp: Experiment, name: str, stage: Stage, poison: Stage) -> list[ReportRow]:
    """The re-learning test's row for a model (none when relearn.rows is 0): named `<row>+relearn`."""
    if not exp.cfg.relearn.rows:
        return []
    label = relearn_label(EVAL_FOLDERS.get(name, name))
    relearned = exp.relearn(label, stage, poison)
    trained = Ran(stage_result(TrainingResult, relearned.folder) or TrainingResult(), None)
    return [exp.row(label, label, (relearned, trained), poison, exp.cfg.relearn.train)]


def relearn_label(name: str) -> str:
    """The report row (and eval folder) of a model's re-learning test."""
    return f"{name}+relearn"
