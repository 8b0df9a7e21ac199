"""Run folders: refuse to clobber, resolved config, a log file, metrics written atomically."""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

from w2sdefense.errors import UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def check_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse a path that is a file, or an existing non-empty folder unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"output folder {path} already exists and is not empty; pass --overwrite to replace it")
    return path


def prepare_run_dir(path: str | Path, overwrite: bool, accelerator=None) -> Path:
    """Create an empty run folder (main process only; every process checks first, then waits)."""
    path = check_run_dir(path, overwrite)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # nobody checks after the main process has written
    if accelerator is None or accelerator.is_main_process:
        if path.is_dir():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return path


@contextmanager
def log_to(path: Path, enabled: bool = True):
    """Send this package's log records to `path` (appending) while the block runs."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("w2sdefense")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
