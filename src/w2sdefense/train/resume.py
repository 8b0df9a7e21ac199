"""The resumable state of a training run: written at each evaluation and on Ctrl-C, read on restart.

`<out>/resume/` holds the trainable weights (`trainable.safetensors`: the adapter and head under
LoRA, every weight under full fine-tuning), the optimizer and scheduler (`optim.pt`) and, in
`state.json`, the step, the epoch and how many of its batches were used, the best-so-far record,
the history, the random-number states and a fingerprint of the settings and data (every train and dev
row's tokens and label, so an edited text is refused, not mixed in). It is written
under a temporary name and swapped in, so a kill at any moment leaves one complete state, and only
the latest is kept. A finished run deletes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from w2sdefense.config import dump_yaml
from w2sdefense.errors import UserError
from w2sdefense.models.batching import Encoded
from w2sdefense.fileio import atomic_write_text, recover_folder, remove_folder, write_folder, write_json
from w2sdefense.rundir import (CONFIG_FILE, RESUME_DIR, RESUME_STATE, check_outside_inputs, claim_run_dir, made_by_tool,
                               stopped_before_any_state, unfinished)
from w2sdefense.runtime import Runtime

log = logging.getLogger(__name__)
STATE_FILE = RESUME_STATE


def fingerprint(settings: dict, seed: int, splits: list[Encoded], model: torch.nn.Module,
                num_processes: int) -> str:
    """What must be equal for a saved state to continue this run: settings, data, trainable shapes."""
    shapes = [(name, list(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
    blob = json.dumps([settings, seed, [data_digest(s) for s in splits], shapes, num_processes], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_digest(split: Encoded) -> str:
    """A digest of every row's token ids and label: an edited text (even of the same length) changes it."""
    digest = hashlib.sha256()
    for ids, label in zip(split.input_ids, split.labels):
        digest.update(json.dumps([label, ids]).encode() + b"\n")
    return digest.hexdigest()


def has_state(out_dir: Path) -> bool:
    """True when `out_dir` holds a resumable state (an unfinished run); a linked resume/ is refused."""
    folder = out_dir / RESUME_DIR
    if folder.is_symlink():
        # The state is swapped by renames, which a link would turn into writes into someone else's folder.
        raise UserError(f"{folder} is a link (to {os.readlink(folder)}), not the run's own folder, so the run is "
                        "never continued from it or written through it; pass --overwrite to start over (the link "
                        "is removed, what it points at is kept)")
    recover_folder(folder)
    return (out_dir / RESUME_DIR / STATE_FILE).is_file()


def rng_states() -> dict:
    """Every random-number generator training draws from, in a form state.json can hold."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    """Put back the generators saved by rng_states."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_state(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, progress, fp: str) -> None:
    """Write the resumable state (main process; `model` unwrapped) and swap it in for the previous one."""
    with write_folder(out_dir / RESUME_DIR) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in _trainable(model).items()},
                  str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        write_json(tmp / STATE_FILE, {"fingerprint": fp, "progress": progress.as_dict(), "rng": rng_states()})


def load_state(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, fp: str) -> dict | None:
    """Restore weights, optimizer and scheduler from `out_dir`'s state; return its record (None: no state)."""
    if not has_state(out_dir):
        return None
    folder = out_dir / RESUME_DIR
    record = _read_record(folder / STATE_FILE)
    if record["fingerprint"] != fp:
        raise UserError(f"{out_dir} holds an unfinished run with other settings, data or model; rerun it with "
                        "the same ones to continue it, or pass --overwrite to start over")
    weights = load_file(str(folder / "trainable.safetensors"))
    params = _trainable(model)
    if set(weights) != set(params):
        raise UserError(f"the resumable state in {folder} does not fit this model; pass --overwrite to start over")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    saved = _read_optimizer(folder / "optim.pt")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return record


_START_OVER = "so the run cannot continue from it; pass --overwrite to start over"


def _read_record(path: Path) -> dict:
    """state.json, or one line saying it is damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise UserError(f"{path}: damaged ({exc}), {_START_OVER}") from None
    if not isinstance(record, dict) or "fingerprint" not in record:
        raise UserError(f"{path}: not a resumable state w2sdefense wrote (it has no fingerprint), {_START_OVER}")
    return record


def _read_optimizer(path: Path) -> dict:
    """optim.pt through torch's safe loader, or one line saying why it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's advice (weights_only=False) would run the file's code
        raise UserError(f"{path}: holds pickled objects that torch's safe loader refuses (they could run code), so "
                        f"it is no state w2sdefense wrote, {_START_OVER}") from None
    except (RuntimeError, EOFError) as exc:  # a cut or overwritten file
        raise UserError(f"{path}: damaged ({str(exc).splitlines()[0]}), {_START_OVER}") from None


def discard_state(out_dir: Path) -> None:
    """Delete the resumable state once the run has finished (it is of no use any more)."""
    remove_folder(out_dir / RESUME_DIR)


@contextmanager
def claim_output(out: Path, overwrite: bool, resume: bool, job: object, rt: Runtime, inputs: dict) -> Iterator[Path]:
    """Claim a training command's output folder (refusing one that overlaps an input) and save the resolved
    config `job` in it; a folder holding an unfinished run of the same settings is continued from its state."""
    check_outside_inputs(out, inputs)
    settings = dump_yaml(job)
    continuing = not overwrite and made_by_tool(out) and unfinished(out)
    if not overwrite and not continuing and stopped_before_any_state(out, settings):
        # Killed before its first dev evaluation: nothing to continue and nothing of anyone's to lose.
        print(f"{out}: a run of these settings stopped before its first saved state; starting it over",
              file=sys.stderr, flush=True)
        overwrite = True
    if resume and not continuing:
        raise UserError(f"nothing to resume in {out}: it holds no unfinished run"
                        + (" (--overwrite starts over)" if overwrite else ""))
    if continuing and (out / CONFIG_FILE).is_file() and (out / CONFIG_FILE).read_text() != settings:
        raise UserError(f"{out} holds an unfinished run with other settings (see its config.yaml); rerun it with "
                        "the same ones to continue it, or pass --overwrite to start over")
    with claim_run_dir(out, overwrite, rt.accelerator, resume=True) as folder:
        if rt.is_main and not continuing:
            atomic_write_text(folder / CONFIG_FILE, settings)
        yield folder
