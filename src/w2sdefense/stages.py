"""A stage of a workflow (`run`, `clean`): a folder and the hash of the inputs that produced it. A finished stage
whose inputs did not change is re-used, an unfinished one of the same inputs continued, a stale one redone.

A stage writes, last, a `stage.json` holding its key (a shipped folder's, `clean`'s model/, beside it:
rundir.shipped_records); `stage.started.json` holds the key of the stage under way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2sdefense.config import changed_settings
from w2sdefense.fileio import write_json
from w2sdefense.results import Result, stage_result
from w2sdefense.rundir import METRICS_FILE, prepare_run_dir, shipped_complete, shipped_records, unfinished
from w2sdefense.runtime import Runtime

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"
STARTED_FILE = "stage.started.json"  # the key of the stage under way (a resumable state continues only it)


@dataclass(frozen=True)
class Stage:
    """A folder of the experiment and the hash of the inputs that produced it."""

    name: str
    folder: Path
    key: str
    # A folder shipped as it is (`clean`'s model/): no bookkeeping inside it, its records beside it; never emptied,
    # its work writes it through rundir.writing_shipped, which replaces it whole and records what it wrote.
    shipped: bool = False

    @classmethod
    def of(cls, name: str, folder: Path, *inputs: object, shipped: bool = False) -> Stage:
        """A stage keyed by the JSON of its inputs (configs by their non-default settings, upstream keys)."""
        inputs = tuple(changed_settings(i) if dataclasses.is_dataclass(i) else i for i in inputs)
        blob = json.dumps(inputs, sort_keys=True, default=str).encode()
        return cls(name, folder, hashlib.sha256(blob).hexdigest()[:16], shipped)

    @property
    def records(self) -> Path:
        """The folder of stage.json and stage.started.json: the stage's own, or beside it when shipped."""
        return shipped_records(self.folder) if self.shipped else self.folder

    def finished(self) -> bool:
        """True when this stage already ran with the same inputs (and a shipped folder still holds what it wrote)."""
        marker = self.records / STAGE_FILE
        done = marker.is_file() and json.loads(marker.read_text()).get("key") == self.key
        return done and (not self.shipped or shipped_complete(self.folder))

    def run(self, rt: Runtime, work: Callable[[], Any], kind: type[Result] | None = None) -> Ran:
        """Run `work` unless finished; return what the stage left. `kind`: the result type its metrics.json is
        read back as when re-used (None: a stage that keeps a record of its own, read as plain data)."""
        if self.finished():
            log.info("stage %s: re-using %s", self.name, self.folder)
            recorded = json.loads((self.records / STAGE_FILE).read_text())
            result = self._recorded(kind)
            on_disk = result.to_json() if kind is not None else result
            # Stages written before stage timing existed fall back to their training time.
            return Ran(result, recorded.get("wall_time_s", on_disk.get("wall_time_s")))
        started = self.records / STARTED_FILE
        resuming = unfinished(self.folder) and started.is_file() and json.loads(started.read_text())["key"] == self.key
        if rt.is_main:
            print(f"==> {self.name}" + (" (continuing where it was stopped)" if resuming else ""), flush=True)
        if not resuming:
            if not self.shipped:  # a shipped folder is replaced whole by its work, never emptied here
                prepare_run_dir(self.folder, overwrite=True, accelerator=rt.accelerator)  # a stale stage is redone
            if rt.is_main:
                write_json(started, {"name": self.name, "key": self.key})
        start = time.perf_counter()
        metrics = work()
        wall = time.perf_counter() - start  # the whole stage: loading, caching, training, saving
        if rt.is_main:
            write_json(self.records / STAGE_FILE, {"name": self.name, "key": self.key, "wall_time_s": wall})
        rt.accelerator.wait_for_everyone()
        return Ran(metrics, wall)

    def _recorded(self, kind: type[Result] | None) -> Any:
        """The finished stage's record: its metrics.json as `kind` (empty when it wrote none)."""
        if kind is not None:
            return stage_result(kind, self.folder) or kind()
        metrics_file = self.folder / METRICS_FILE
        return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}


@dataclass(frozen=True)
class Ran:
    """What a stage left: its result (typed, or the plain record of a stage that keeps its own) and its one wall
    time, the whole stage's (loading, caching, training, saving; recorded in stage.json)."""

    result: Any
    wall_time_s: float | None
