"""The Python API: the practitioner's and the researcher's commands as functions with typed results (named
`clean_model`, `scan_model` and `run_config`: `w2sdefense.clean` and `w2sdefense.scan` are the modules behind them).

    from w2sdefense import clean_model, scan_model
    found = scan_model("path/to/suspect", "path/to/clean-data", "runs/scan", base="smollm2-135m")
    report = clean_model("path/to/suspect", "path/to/clean-data", "runs/cleaned", base="smollm2-135m",
                         triggers=[c.trigger for c in found.candidates[:3]])
    print(report.after.clean_accuracy, report.after.triggers[0].asr_cc)

A model is a name or a folder (anything `--model` takes) or an in-memory `(PreTrainedModel, tokenizer)` pair; data
is a name or a folder (anything `--data` takes) or in memory: a `datasets.DatasetDict` or a mapping of split name to
rows (`{"train": [{"text": ..., "label": ...}, ...], "dev": ..., "test": ...}`). In-memory inputs are written to a
temporary folder for the run and removed after it. Quiet by default: no progress bars, no library warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from w2sdefense.config import CleanJob, ExperimentConfig, ScanJob, build_job, read_yaml
from w2sdefense.errors import UserError
from w2sdefense.progress import quiet_libraries, silenced
from w2sdefense.results import CleanReport, ExperimentReport, ScanReport, read_report

Model = Any  # a name or folder (str, Path), or a (PreTrainedModel, tokenizer) pair
Data = Any  # a name or folder (str, Path), a datasets.DatasetDict, or {split: rows}
SPLITS = ("train", "dev", "test")


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

    cfg = config if isinstance(config, ExperimentConfig) else _job(ExperimentConfig, {}, settings, read_yaml(config))
    with _quiet(quiet):
        run_experiment(cfg, overwrite)
    return read_report(cfg.output_dir)


def _job(cls, flags: Mapping[str, Any], settings: Iterable[str], data: dict | None = None):
    """A job from flags (None: unset) then dotted `settings`, as the command line builds it."""
    if isinstance(settings, str):
        raise UserError(f"settings is a list of dotted assignments, e.g. [{settings!r}]; got one text")
    return build_job(cls, data or {}, flags, settings)


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    quiet_libraries()
    with silenced():
        yield


@contextlib.contextmanager
def _inputs(model: Model, data: Data) -> Iterator[tuple[str, str]]:
    """Names for `model` and `data`: as given when they are names or paths, else a temporary folder written for
    the run (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="w2sdefense-") as tmp:
        yield _model_name(model, Path(tmp) / "model"), _data_name(data, Path(tmp) / "data")


def _model_name(model: Model, folder: Path) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    if isinstance(model, tuple) and len(model) == 2 and hasattr(model[0], "save_pretrained"):
        model[0].save_pretrained(folder)
        model[1].save_pretrained(folder)
        return str(folder)
    raise UserError(f"model must be a name, a folder or a (PreTrainedModel, tokenizer) pair; got {type(model).__name__}")


def _data_name(data: Data, folder: Path) -> str:
    if isinstance(data, (str, Path)):
        return str(data)
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
