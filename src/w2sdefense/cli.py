"""The `w2sdefense` command line: parse, call one function, print where the results are."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from w2sdefense.api import defend_model, evaluate_model, poison_data, train_model, train_teacher
from w2sdefense.config import CleanJob, ExperimentConfig, ScanJob, build_job, read_yaml
from w2sdefense.errors import Interrupted, UserError
from w2sdefense.progress import quiet_libraries

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Poison, fine-tune, defend (weak-to-strong unlearning) and measure LM classifiers.",
)


def _click_exceptions(name: str) -> tuple[type, ...]:
    """click's exception class `name`, and typer's copy of it: typer 0.2x carries its own click, whose usage
    errors are not click's classes."""
    found = [getattr(click.exceptions, name)]
    vendored = getattr(getattr(typer, "_click", None), "exceptions", None)
    if vendored is not None and hasattr(vendored, name):
        found.append(getattr(vendored, name))
    return tuple(found)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"w2sdefense {version('w2sdefense')}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Poison, fine-tune, defend (weak-to-strong unlearning) and measure LM classifiers."""

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML file with this command's settings.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Dotted override of one of this command's settings (repeatable; the README's Config lists them).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output folder (refused if it exists, unless --overwrite).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite",
                                             help="Replace an existing output folder (only one this tool made).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in --out (rerunning the "
                                         "same command on it does too); an error when there is none.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", metavar="DIR", help="Folder of named datasets (default: $W2S_DATA_DIR).")]
DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", metavar="NAME|DIR", help="Dataset name, or a folder with train/dev/test files.")]


def _load(cls, config: Path | None, overrides: list[str] | None, **flags):
    """Build a job config: YAML file, then the command's flags, then --set overrides."""
    return build_job(cls, read_yaml(config) if config else {}, flags, overrides or [])


@app.command()
def poison(
    out: OutOpt,
    data: DataOpt = None,
    attack: Annotated[Optional[str], typer.Option(help="Attack name: badnet, insent, synbkd, stylebkd.")] = None,
    target_label: Annotated[Optional[int], typer.Option(min=0, help="The label triggered inputs get (poison.target_label).")] = None,
    count: Annotated[Optional[int], typer.Option(min=1, help="How many training rows to poison (poison.count).")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Or the share of training rows, in (0, 1] (poison.rate).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="clean-label, dirty-label or mix (poison.mode).")] = None,
    selection: Annotated[Optional[str], typer.Option(help="first (file order) or random (poison.selection).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Poison a dataset: writes train/dev/test/test_triggered.jsonl and poison.json."""
    result = poison_data(data, out, attack=attack, target_label=target_label, count=count, rate=rate, mode=mode,
                         selection=selection, data_dir=data_dir, config=config, settings=set_ or (),
                         overwrite=overwrite, quiet=False)
    typer.echo(f"poisoned data written to {result.folder}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The options every training command (train, teacher, defend) takes: --out first, the others last."""

    out: OutOpt
    data_dir: DataDirOpt = None
    config: ConfigOpt = None
    set_: SetOpt = None
    overwrite: OverwriteOpt = False
    resume: ResumeOpt = False

    def options(self) -> dict:
        """The API's keywords for these options (w2sdefense.api; the command line is never quiet)."""
        return {"data_dir": self.data_dir, "config": self.config, "settings": self.set_ or (),
                "overwrite": self.overwrite, "resume": self.resume, "quiet": False}


def _training_command(command: Callable[..., None]) -> Callable[..., None]:
    """Register `command` with RunFlags' options around its own (as RunFlags says), passed to it as one `flags`."""
    hints = typing.get_type_hints(RunFlags, include_extras=True)  # the Annotated option declarations
    keyword = inspect.Parameter.KEYWORD_ONLY  # typer passes every option by name; this lets --out go first
    shared = [inspect.Parameter(f.name, keyword, annotation=hints[f.name],
                                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(RunFlags)]
    own = [p.replace(kind=keyword) for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "flags"]

    @functools.wraps(command)
    def with_flags(**options) -> None:
        flags = RunFlags(**{p.name: options.pop(p.name) for p in shared})
        command(**options, flags=flags)

    required = [p for p in shared if p.default is inspect.Parameter.empty]
    optional = [p for p in shared if p not in required]
    with_flags.__signature__ = inspect.Signature(required + own + optional)  # what typer reads the options from
    return app.command()(with_flags)


@_training_command
def train(
    data: DataOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Built-in name, checkpoint folder or hub id.")] = None,
    *,
    flags: RunFlags,
) -> None:
    """Fine-tune a classifier (full or LoRA) on a dataset or a poisoned folder."""
    result = train_model(model, data, flags.out, **flags.options())
    typer.echo(f"best clean dev accuracy {result.best_dev_accuracy:.4f}; model and metrics.json in {flags.out}")


@_training_command
def teacher(
    student: Annotated[Optional[str], typer.Option(help="The student (sets the feature size D).")] = None,
    data: DataOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Teacher encoder (default minilm-l6).")] = None,
    *,
    flags: RunFlags,
) -> None:
    """Fully fine-tune the small clean teacher with a projection head to the student's width."""
    result = train_teacher(student, data, flags.out, model=model, **flags.options())
    typer.echo(f"teacher (D={result.feature_dim}) clean dev accuracy {result.best_dev_accuracy:.4f}; in {flags.out}")


@_training_command
def defend(
    student: Annotated[Optional[str], typer.Option(help="The poisoned classifier (run folder, checkpoint, hub id).")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="A folder written by `w2sdefense teacher`.")] = None,
    defense: Annotated[Optional[str], typer.Option(help="A defense from `w2sdefense list` (default w2sdefense).")] = None,
    data: DataOpt = None,
    *,
    flags: RunFlags,
) -> None:
    """Defend a poisoned classifier with clean data only: any defense `w2sdefense list` shows (repairs and input
    filters)."""
    from w2sdefense.defenses import DEFENSES
    from w2sdefense.rundir import MODEL_DIR

    result = defend_model(student, data, flags.out, defense=defense, teacher=teacher, **flags.options())
    spec = DEFENSES.get(result.defense)
    if spec.kind == "input-filter":
        typer.echo(f"{spec.name}: filter calibrated on clean dev data; `w2sdefense evaluate --model {flags.out}` "
                   "measures the model behind it")
    else:
        typer.echo(f"{spec.name}: clean dev accuracy {result.best_dev_accuracy:.4f}; model in {flags.out / MODEL_DIR}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="The model to measure: a run folder (a teacher run is measured with its "
                                            "own head; a filter run, as the model behind it), checkpoint, adapter "
                                            "or hub id.")],
    data: Annotated[Path, typer.Option("--data", "-d", metavar="DIR", help="A poison folder (test.jsonl + test_triggered.jsonl).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="FILE", help="metrics JSON file (default: print only).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing metrics file (never a run's own).")] = False,
) -> None:
    """Clean accuracy and attack success rate of a model on a poison folder's test sets."""
    import json

    from w2sdefense.runtime import is_main_process

    result = evaluate_model(model, data, out=out, config=config, settings=set_ or (), overwrite=overwrite,
                            quiet=False)
    if is_main_process():
        metrics = result.to_json()
        keys = ("clean_accuracy", "attack_success_rate", "attack_success_rate_clean_correct", "clean_total",
                "triggered_total", "attack_success_rate_survived", "triggered_survived_total", "trigger_cut")
        # An input-filter run reports no truncation counts: only the keys present are printed.
        typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
        if out:
            typer.echo(f"metrics written to {out}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: output_dir in the config).")] = None,
    data_dir: DataDirOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start from scratch instead of re-using finished stages.")] = False,
) -> None:
    """Run a whole experiment: poison, victim, teacher, defenses, evaluation, report."""
    from w2sdefense.eval.report import markdown_table
    from w2sdefense.pipeline import run_experiment
    from w2sdefense.results import read_report
    from w2sdefense.rundir import check_outside_inputs
    from w2sdefense.runtime import make_runtime

    cfg = _load(ExperimentConfig, config, set_, **{"output_dir": _str(out), "data.data_dir": _str(data_dir)})
    check_outside_inputs(cfg.output_dir, {"config file": config})  # data and models: run_experiment
    rt = make_runtime(cfg.runtime)
    folder = run_experiment(cfg, overwrite, rt)
    if rt.is_main:
        report = read_report(folder)
        typer.echo("\n" + markdown_table(report.rows) + "\n")
        for line in report.summary:
            typer.echo(line)
        curves = sorted(str(p.relative_to(folder)) for p in folder.glob("*/**/curves.png"))
        typer.echo(f"report: {folder / 'report.md'} (and report.json)")
        if curves:
            typer.echo(f"per-step curves (dev accuracy, ASR-cc): {', '.join(curves)} under {folder}")


@app.command()
def clean(
    out: OutOpt,
    model: Annotated[Optional[str], typer.Option(help="The suspect classifier (run folder, checkpoint, adapter, hub id).")] = None,
    data: DataOpt = None,
    base: Annotated[Optional[str], typer.Option(help="The public model it was fine-tuned from: the default defense "
                                                "then resets toward it (fine-mixing, rho 0).")] = None,
    defense: Annotated[Optional[str], typer.Option(help="Another repair defense from `w2sdefense list`.")] = None,
    trigger: Annotated[Optional[list[str]], typer.Option(metavar="TEXT", help="A candidate trigger to measure before and after "
                                                         "(repeatable).")] = None,
    triggers: Annotated[Optional[Path], typer.Option(metavar="FILE|DIR", help="A file of candidate triggers, one per line, "
                                                     "or a `scan` folder (its triggers.txt).")] = None,
    unlabelled: Annotated[Optional[Path], typer.Option(help="A file of in-domain texts without labels (one a line, "
                                                       "or JSONL with a text): distilling defenses learn the "
                                                       "suspect's answers on them.")] = None,
    target_label: Annotated[Optional[int], typer.Option(min=0, help="The triggers' target label (default: every "
                                                        "label, the highest reported).")] = None,
    fresh_head: Annotated[bool, typer.Option("--fresh-head", help="Reset: a new head, not the suspect's.")] = False,
    base_tokenizer: Annotated[bool, typer.Option("--base-tokenizer", help="Reset: the base's tokenizer.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start from scratch instead of re-using finished "
                                            "stages.")] = False,
) -> None:
    """Clean a suspect model: defense, a standalone merged model in OUT/model, CA and trigger ASR-cc before/after."""
    from w2sdefense.clean import read_triggers, run_clean
    from w2sdefense.eval.clean_report import summary_lines
    from w2sdefense.runtime import make_runtime

    flags = [f"target_label={target_label}"] if target_label is not None else []
    flags += ["defense.head=fresh"] * fresh_head + ["defense.tokenizer=base"] * base_tokenizer
    job = _load(CleanJob, config, flags + (set_ or []), **{"model": model, "base_model": base, "defense.name": defense,
                                                            "data.dataset": data, "data.data_dir": _str(data_dir),
                                                            "unlabelled": _str(unlabelled)})
    extra = list(trigger or []) + (read_triggers(triggers) if triggers else [])
    if extra:
        job = dataclasses.replace(job, triggers=[*job.triggers, *extra])
    rt = make_runtime(job.runtime)
    report = run_clean(job, out, rt, overwrite, config)
    if rt.is_main:
        for line in summary_lines(report):
            typer.echo(line)
        typer.echo(f"report: {out / 'report.md'} (and report.json)")


@app.command()
def scan(
    out: OutOpt,
    model: Annotated[Optional[str], typer.Option(help="The suspect classifier (run folder, checkpoint, adapter, hub id).")] = None,
    data: DataOpt = None,
    base: Annotated[Optional[str], typer.Option(help="The public model it was fine-tuned from: adds the "
                                                "embedding-shift detector.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished scan in OUT.")] = False,
) -> None:
    """Is this model backdoored? Candidate triggers found without knowing the trigger, measured, and a verdict."""
    from w2sdefense.runtime import make_runtime
    from w2sdefense.scan import run_scan, summary_lines

    job = _load(ScanJob, config, set_ or [], **{"model": model, "base_model": base, "data.dataset": data,
                                                 "data.data_dir": _str(data_dir)})
    rt = make_runtime(job.runtime)
    report = run_scan(job, out, rt, overwrite, config)
    if rt.is_main:
        for line in summary_lines(report):
            typer.echo(line)
        typer.echo(f"report: {out / 'report.md'} (and report.json; candidates in {out / 'triggers.txt'})")


@app.command(name="list")
def list_components() -> None:
    """List the built-in attacks, models, defenses and scan detectors."""
    from w2sdefense.attacks.base import ATTACKS
    from w2sdefense.defenses import DEFENSES
    from w2sdefense.models import BUILTIN_MODELS
    from w2sdefense.scan import DETECTORS

    typer.echo(f"attacks:  {ATTACKS.describe()}")
    typer.echo(f"models:   {', '.join(BUILTIN_MODELS)} (or any local folder / hub id)")
    typer.echo("defenses:")
    for name, spec in DEFENSES:
        aliases = ", ".join(DEFENSES.aliases_of(name))
        method = {"any": "lora or full (train.method)", None: "nothing"}.get(spec.method, spec.method)
        traits = [spec.kind, f"fine-tunes: {method}"] + (["needs a teacher"] if spec.needs_teacher else [])
        settings = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(spec.settings)) or "none"
        typer.echo(f"  {name}{f' (alias {aliases})' if aliases else ''}: {spec.summary}")
        typer.echo(f"      {'; '.join(traits)}; settings: {settings}")
    typer.echo(f"scan detectors: {DETECTORS.describe()}")


_OS_HINTS = {
    errno.ENOSPC: "free some space, or choose an output on another disk; a training run continues from its last "
                  "saved state when run again",
    errno.EDQUOT: "free some of your quota, or choose an output on another disk",
    errno.EROFS: "choose an output on a writable disk",
}


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: the path, the system's reason, and what to do."""
    reason = (exc.strerror or os.strerror(exc.errno)).lower()
    path = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    hint = _OS_HINTS.get(exc.errno)
    return (f"{path}: {reason}" if path else reason) + (f"; {hint}" if hint else "")


def _interrupted_line() -> str:
    """Where a Ctrl-C outside the training loop stopped, and what the folders keep."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    where = f"w2sdefense {command}" if command else "w2sdefense"
    return (f"interrupted: {where} stopped (Ctrl-C) before it finished; kept: only what it had saved (a training "
            "run's last resumable state and the finished stages of `run`, which the same command continues); a "
            "folder it had just made is removed")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    quiet_libraries()
    try:
        _run_app()
    finally:
        if "torch" in sys.modules:  # a command that never loaded torch has no process group to tear down
            from w2sdefense.runtime import shutdown_distributed

            shutdown_distributed()


def _run_app() -> None:
    """The command, its outcome as an exit code and at most one line on stderr."""
    try:
        # Not standalone: click would turn Ctrl-C into its own "Aborted!" and exit code 1.
        code = app(standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the disk, not the code: a read-only or full disk, a path not allowed
        if exc.errno is None:
            raise
        typer.echo(f"error: {os_error_line(exc)}", err=True)
        sys.exit(2)
    except Interrupted as exc:  # training stopped at a step boundary, its state saved
        typer.echo(str(exc), err=True)
        sys.exit(130)
    except (KeyboardInterrupt, *_click_exceptions("Abort")):
        code = 130
    except _click_exceptions("Exit") as exc:
        sys.exit(exc.exit_code)
    except _click_exceptions("ClickException") as exc:  # a usage mistake: click's own message and usage line
        exc.show()
        sys.exit(exc.exit_code)
    if code == 130:  # typer turns a Ctrl-C outside the training loop (or a second one) into a silent 130
        typer.echo(_interrupted_line(), err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
