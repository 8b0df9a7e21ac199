"""Run folders: never touching what the tool did not make, one command per folder; a log file."""

# Every folder the tool makes carries MARKER; `--overwrite` empties only such folders. A command
# holds an exclusive lock (LOCK_FILE, inside its folder) while it runs, and removes the folder
# again if it made it and then failed. A shipped folder (`clean`'s model/, pushed to a hub as it is)
# carries no bookkeeping: its records lie beside it, naming what the tool wrote into it (see below).

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from w2sdefense.errors import UserError
from w2sdefense.fileio import atomic_write_text, write_folder, write_json

if TYPE_CHECKING:
    from w2sdefense.config import DataConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MARKER = ".w2sdefense"
LOCK_FILE = ".w2sdefense.lock"
BOOKKEEPING = (MARKER, LOCK_FILE)  # files that do not make a folder "not empty"
MODEL_DIR = "model"  # a trained stage's selected checkpoint (train/loop.py writes it); `clean`'s shipped model
MERGED_DIR = "merged"  # a LoRA stage's adapter folded into its base (train.merge)
BASE_DIR = "base"  # a LoRA stage's base model, when it was built in code
METRICS_FILE = "metrics.json"  # a stage's record: what it measured, written once when it ends
FILTER_FILE = "filter.json"  # what marks an input-filter run (defenses/filtering.py writes it)
TRIGGERS_FILE = "triggers.txt"  # `scan`'s candidate triggers, one a line (`clean --triggers` reads it)
READER_DIR = "reader"  # `scan`'s clean reader, where it is fine-tuned (scan.reader: lora)
STAGES_DIR = ".stages"  # beside a shipped folder: its stage records (shipped_records), kept out of what is shipped
WRITTEN_FILE = "written.json"  # among a shipped folder's records: the names of what the tool wrote into it
CARD_FILE = "README.md"  # `clean`'s model card in its shipped model folder (eval/card.py writes it)
# The report rows of `run` beside its defenses, and the eval/ folder each is measured in: no defense may
# take one of these names as its label (its row and its eval/ folder would collide with theirs).
CLEAN_ROW, POISONED_ROW, TEACHER_ROW = "clean model", "poisoned", "teacher"
EVAL_FOLDERS = {CLEAN_ROW: "clean", POISONED_ROW: "poisoned", TEACHER_ROW: "teacher"}
RESERVED_ROWS = (*EVAL_FOLDERS, *(f for f in EVAL_FOLDERS.values() if f not in EVAL_FOLDERS))
RESUME_DIR = "resume"  # a training run's resumable state (train/resume.py): present while unfinished
RESUME_STATE = "state.json"  # written last into RESUME_DIR
REPORT_FILE = "report.json"  # a workflow's report (`run`: results.ExperimentReport)
REPORT_MD = "report.md"  # the same report for people
CONFIG_FILE = "config.yaml"  # the resolved settings a command ran with
RUN_LOG = "run.log"  # a workflow's log (`run`, `clean`, `scan`)
TRAIN_LOG = "train.log"  # a training stage's log
CURVES_FILE = "curves.png"  # a stage's per-step curves (dev accuracy, the trigger probe)
RUN_FILES = (CONFIG_FILE, RUN_LOG, REPORT_FILE, REPORT_MD)  # what `run` writes at its top
MARKER_TEXT = "This folder was made by w2sdefense; `--overwrite` may empty and refill it.\n"

_held: dict[Path, int] = {}  # folders this process has locked -> the lock's file descriptor


def unfinished(path: str | Path) -> bool:
    """True when `path` holds the resumable state of a training run that has not finished."""
    state = Path(path) / RESUME_DIR
    return (state / RESUME_STATE).is_file() or state.with_name(RESUME_DIR + ".old").is_dir()


# What `train`, `teacher` and `defend` write before their first dev evaluation saves a resumable state.
_BEFORE_STATE = {*BOOKKEEPING, CONFIG_FILE, TRAIN_LOG, RESUME_DIR, BASE_DIR}


def stopped_before_any_state(path: str | Path, settings: str) -> bool:
    """True for a folder this tool made for a run of exactly `settings` that was stopped before it saved any
    state: only its config, log and bookkeeping (an empty resume/, a LoRA base) are there, no model, no metrics."""
    path = Path(path)
    if not made_by_tool(path) or unfinished(path) or not (path / CONFIG_FILE).is_file():
        return False
    if (path / CONFIG_FILE).read_text(encoding="utf-8") != settings:
        return False
    return all(entry.name in _BEFORE_STATE and not entry.is_symlink() for entry in path.iterdir())


def made_by_tool(path: str | Path) -> bool:
    """True when `path` is a folder this tool made (it carries the marker file)."""
    return (Path(path) / MARKER).is_file()


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(entry.name not in BOOKKEEPING for entry in path.iterdir())


def check_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse a path that is a file, or an existing non-empty folder unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    _refuse_file_parent(path)
    if path.is_dir():
        _refuse_if_locked(path / LOCK_FILE)  # "in use by process N" says more than "already exists"
    if _has_content(path) and not overwrite:
        raise UserError(f"output folder {path} already exists and is not empty; pass --overwrite to replace it")
    return path


def check_replaceable(path: str | Path, overwrite: bool) -> Path:
    """check_run_dir, and refuse to empty a non-empty folder the tool did not make."""
    path = check_run_dir(path, overwrite)
    if _has_content(path) and not made_by_tool(path):
        raise UserError(f"{path} is not empty and was not made by w2sdefense (it has no {MARKER} file), "
                        "so it is never deleted, not even with --overwrite; move it away or choose another "
                        "output folder")
    return path


def _paths(inputs: Mapping[str, str | Path | None]) -> Iterator[tuple[str, Path, Path]]:
    """(label, path as given, resolved path) of each input that exists on disk."""
    for label, value in inputs.items():
        source = Path(value).expanduser() if value else None
        if source is not None and source.exists():  # else a built-in model or hub name, not a path
            yield label, source, source.resolve()


def check_outside_inputs(out: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (labelled: "--data", "config file")."""
    target = Path(out).expanduser().resolve()
    for label, source, real in _paths(inputs):
        relation = ("is" if real == target else "contains" if target in real.parents
                    else "lies inside" if real in target.parents else None)
        if relation:
            raise UserError(f"the output {out} {relation} the {label} {source}, which this command reads; "
                            "choose an output outside its inputs")


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse a folder, an existing file without `overwrite`, and ever a file of a run folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; --out takes the name of a JSON file")
    if path.exists() and _belongs_to_run(path):
        raise UserError(f"{path} is the {path.name} of the w2sdefense run folder {path.parent}, "
                        "which this command never replaces; choose another --out")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    _refuse_file_parent(path)
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(folder, os.W_OK):  # before the work, not after a whole evaluation
        raise UserError(f"cannot write {path}: {folder} is not writable (a read-only disk, or no permission)")
    return path


def check_outside_models(out: str | Path, models: Mapping[str, str | None]) -> None:
    """Refuse an output file that is a model given as input (labelled: "--model") or lies inside its folder.

    A run folder's top level may take a metrics file beside its model (RUN/eval.json; check_output_file
    keeps the run's records); everything below it (model/, base/, resume/) and every file of a checkpoint
    folder belong to the model the command loads.
    """
    target = Path(out).expanduser().resolve()
    for label, source, real in _paths(models):
        run = real.is_dir() and (made_by_tool(real) or (real / MODEL_DIR).is_dir())
        if real == target:
            raise UserError(f"the output {out} is the model {source} ({label}), which this command reads")
        if real in target.parents and not (run and target.parent == real):
            raise UserError(f"the output {out} lies inside the model folder {source} ({label}), which this command "
                            "reads; choose an output outside it" + (f", e.g. {source / 'eval.json'}" if run else ""))


def _refuse_file_parent(path: Path) -> None:
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder")


RUN_RECORDS = ("metrics.json", "stage.json", CONFIG_FILE, REPORT_FILE, REPORT_MD, "poison.json",
               "train.jsonl", "dev.jsonl", "test.jsonl", "test_triggered.jsonl", "filter.json")


def _belongs_to_run(path: Path) -> bool:
    """One of the records of a run folder (the tool's own, or one made before markers existed).

    Other files in a run folder (an earlier `evaluate --out run/eval.json`) may be replaced.
    """
    legacy = (path.parent / "stage.json").is_file() or (path.parent / CONFIG_FILE).is_file()
    return path.name in _RUN_OWN and (made_by_tool(path.parent) or legacy)


# Everything a run folder keeps about itself: its records, logs, marker and lock (evaluate --out never replaces one)
_RUN_OWN = {*RUN_RECORDS, *BOOKKEEPING, TRAIN_LOG, RUN_LOG, "stage.started.json", CURVES_FILE, TRIGGERS_FILE}


def prepare_run_dir(path: str | Path, overwrite: bool, accelerator=None) -> Path:
    """Create an empty, marked run folder (main process only; every process checks first, then waits)."""
    path = check_replaceable(path, overwrite)
    _wait(accelerator)  # nobody checks after the main process has written
    if accelerator is None or accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        _empty(path)
        _mark(path)
    _wait(accelerator)
    return path


@contextmanager
def claim_run_dir(path: str | Path, overwrite: bool, accelerator=None,
                  stage_file: str | None = None, resume: bool = False, command: str | None = None) -> Iterator[Path]:
    """prepare_run_dir, locked for the block; a failed block removes the folder if it made it.

    With `resume`, a folder holding an unfinished training run is kept as it is (unless `overwrite`)
    for the command to continue. A folder is never removed while it holds a finished stage or a
    resumable state: the rerun picks them up.
    """
    # With `stage_file` (`run`) an existing folder is re-used (emptied only with `overwrite`).
    path = Path(path)
    continuing = resume and not overwrite and made_by_tool(path) and unfinished(path)
    if stage_file:
        _check_run_reusable(path, stage_file, command or "run")
        if command and not overwrite:
            _check_same_command(path, command, stage_file)
    elif not continuing:
        check_replaceable(path, overwrite)
    _wait(accelerator)
    main = accelerator is None or accelerator.is_main_process
    created = _make(path) if main else None
    fd = None
    try:
        fd = _lock(path) if main else None  # inside: a lock that cannot be written (full disk) leaves no folder
        if main and not continuing:
            _fill_in(path, overwrite, stage_file, command)
        _wait(accelerator)
        yield path
    except BaseException:
        if created is not None and not _worth_keeping(path, stage_file):
            _remove(path, created)
        raise
    finally:
        if fd is not None:
            _unlock(path, fd)


def _worth_keeping(path: Path, stage_file: str | None) -> bool:
    """A failed command's folder holds a finished stage or a resumable state that a rerun continues."""
    return bool(stage_file and any(path.rglob(stage_file))) or any(path.rglob(f"{RESUME_DIR}/{RESUME_STATE}"))


def _fill_in(path: Path, overwrite: bool, stage_file: str | None, command: str | None = None) -> None:
    """Under the lock: adopt an older run folder, or empty the folder; then mark it."""
    if overwrite and made_by_tool(path):
        _refuse_foreign(path)
    if stage_file and not made_by_tool(path):
        for stage in path.rglob(stage_file):
            _mark(stage.parent)  # stages of an older version of the tool, or copied from another run
    if overwrite or not stage_file:
        _empty(path)
    _mark(path, command)


# The names the tool gives what it writes in its folders (and their half-written twins): anything else was
# put there by someone else, and `--overwrite` never deletes it. A folder with one of these names is not looked
# into (a checkpoint holds whatever file names transformers gives it), except a shipped one: its record names
# what the tool wrote there.
_TOOL_NAMES = {*BOOKKEEPING, *RUN_FILES, *RUN_RECORDS, TRIGGERS_FILE, TRAIN_LOG, CURVES_FILE, "stage.started.json", MODEL_DIR,
               MERGED_DIR, BASE_DIR, RESUME_DIR, STAGES_DIR, READER_DIR, "eval", "defenses", "teacher", "teacher_cache"}


def _tool_named(name: str) -> bool:
    stem = name.removesuffix(".partial").removesuffix(".old")
    return stem in _TOOL_NAMES or _temporary(name)


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # atomic_write_text's temp


def not_the_tools(path: Path, prefix: str = "") -> list[str]:
    """Entries of the tool-made folder `path` that the tool never writes (`run`'s stage folders and `clean`'s shipped
    model folder are looked into)."""
    found = []
    for entry in sorted(path.iterdir()):
        if is_shipped(entry):
            found += [f"{prefix}{entry.name}/{name}" for name in not_written(entry)]
        elif _tool_named(entry.name):
            continue
        elif entry.is_dir() and not entry.is_symlink() and made_by_tool(entry):
            found += not_the_tools(entry, f"{prefix}{entry.name}/")
        else:
            found.append(prefix + entry.name)
    return found


def _refuse_foreign(path: Path) -> None:
    """Refuse to empty a tool-made folder that also holds files the tool never writes (a user's notes)."""
    foreign = not_the_tools(path)
    if foreign:
        one = len(foreign) == 1
        raise UserError(f"{path} was made by w2sdefense, but {_listed(foreign)} {'is' if one else 'are'} not among "
                        f"the files w2sdefense writes, and --overwrite would delete everything in the folder; move "
                        f"{'it' if one else 'them'} out first, or choose another output folder")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# A shipped folder (`clean`'s model/) is pushed to a hub as it is, so it holds no bookkeeping: no marker, no stage
# record. Its records lie beside it (PARENT/.stages/NAME/), with the names of what the tool wrote into it. Those
# names are the rule for what the tool may replace there: the folder is filled by transformers' save_pretrained,
# whose file names vary by model, version and tokenizer, so only a record made at save time says which are the
# tool's. Anything else (a model card or notes a user added) is never deleted: a redo or --overwrite refuses.


def shipped_records(folder: Path) -> Path:
    """Where the stage records of the shipped `folder` lie: PARENT/.stages/NAME/."""
    return folder.parent / STAGES_DIR / folder.name


def is_shipped(folder: Path) -> bool:
    """A shipped folder: one with records beside it, or `clean`'s model folder as older versions made it (marked,
    its stage record inside)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    older = folder.name == MODEL_DIR and made_by_tool(folder) and (folder / "stage.json").is_file()
    return older or shipped_records(folder).is_dir()


def written_by_tool(folder: Path) -> set[str]:
    """The names the tool wrote into the shipped `folder`, as recorded when it wrote them. In a folder of an older
    version: what is no newer than its stage record, written right after the model (a user's file came later)."""
    record = shipped_records(folder) / WRITTEN_FILE
    if record.is_file():
        return set(json.loads(record.read_text(encoding="utf-8"))["files"])
    stage = folder / "stage.json"
    if not (made_by_tool(folder) and stage.is_file()):
        return set()
    done = stage.stat().st_mtime_ns
    return {e.name for e in folder.iterdir() if e.name in BOOKKEEPING or e.lstat().st_mtime_ns <= done}


def shipped_complete(folder: Path) -> bool:
    """True when the shipped `folder` still holds everything the tool recorded writing there (a user may have moved
    it away, to publish it: its records beside it then say nothing about what is there)."""
    own = written_by_tool(folder)
    return folder.is_dir() and bool(own) and all((folder / name).exists() for name in own)


def not_written(folder: Path) -> list[str]:
    """Entries of the shipped `folder` that the tool did not write: never deleted, never written over."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    own = written_by_tool(folder)
    return [e.name for e in sorted(folder.iterdir())
            if not (e.name in own or _temporary(e.name) or (e.name == CARD_FILE and tool_card(e)))]


def check_shipped_replaceable(folder: Path) -> None:
    """Refuse to replace the shipped `folder` while it holds anything the tool did not write."""
    foreign = not_written(folder)
    if foreign:
        one = len(foreign) == 1
        raise UserError(f"{folder} holds {_listed(foreign)}, which w2sdefense did not write, and this run makes the "
                        f"model anew, replacing the folder; move {'it' if one else 'them'} out of {folder} first "
                        "(w2sdefense never deletes what it did not write)")


@contextmanager
def writing_shipped(folder: Path) -> Iterator[Path]:
    """An empty folder to write the shipped `folder`'s new content into, swapped in whole at the end. What it holds is
    recorded as the tool's before the swap too (with the old folder's names), so no kill leaves a file unrecorded."""
    check_shipped_replaceable(folder)
    with write_folder(folder) as tmp:
        yield tmp
        names = {entry.name for entry in tmp.iterdir()}
        _record_written(folder, names | written_by_tool(folder))
    _record_written(folder, names)


def _record_written(folder: Path, names: set[str]) -> None:
    write_json(shipped_records(folder) / WRITTEN_FILE, {"files": sorted(names)})


# The card's last line marks it as the tool's: the hash of the text above it. A card someone edited (or put there)
# no longer matches, so it is theirs: `clean` neither rewrites nor deletes it.
_CARD_SEAL = ("<!-- w2sdefense clean wrote this card and rewrites it with each report; once edited, it is yours "
              "and never touched. sha256 ")


def seal_card(text: str) -> str:
    """The card `text` and its last line, which marks it as the tool's."""
    return f"{text}{_CARD_SEAL}{hashlib.sha256(text.encode('utf-8')).hexdigest()} -->\n"


def tool_card(path: Path) -> bool:
    """True for a card the tool wrote and nobody edited since (its last line holds the hash of the rest)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        text = path.read_bytes().decode("utf-8")  # bytes: no newline translation hides an edit
    except UnicodeDecodeError:
        return False
    lines = text.splitlines(keepends=True)
    return bool(lines) and lines[-1].startswith(_CARD_SEAL) and seal_card("".join(lines[:-1])) == text


def check_card(folder: Path) -> None:
    """Refuse to write the tool's card over a README.md in the shipped `folder` that is not the tool's own."""
    path = folder / CARD_FILE
    if (path.exists() or path.is_symlink()) and not (tool_card(path) or CARD_FILE in written_by_tool(folder)):
        raise UserError(f"{path} is not the model card w2sdefense wrote (someone put it there or edited it), and "
                        "`clean` rewrites its card with every report; move it out of the folder, keeping your text "
                        "elsewhere, and run again")


def _check_run_reusable(path: Path, stage_file: str, command: str = "run") -> None:
    """Refuse a file, or a non-empty folder that is neither marked nor made of stage output only; the refusal names
    the `command` that asked."""
    check_run_dir(path, overwrite=True)
    if not _has_content(path) or made_by_tool(path):
        return
    foreign = _not_run_output(path, stage_file)
    if foreign is None:
        return  # a run of an older version of the tool, or finished stages copied in
    raise UserError(f"{path} is not empty and was not made by w2sdefense (it has no {MARKER} file, and "
                    f"{foreign} is no finished stage of a run), so `{command}` will neither re-use nor replace it; "
                    "move it away or choose another output folder")


def _not_run_output(path: Path, stage_file: str) -> str | None:
    """The first entry that is neither a file `run` writes nor a folder holding a finished stage."""
    content = [e for e in sorted(path.iterdir()) if e.name not in BOOKKEEPING]
    others = [e for e in content if not (e.is_file() and e.name in RUN_FILES)]
    for entry in others:
        if not (entry.is_dir() and not entry.is_symlink() and (any(entry.rglob(stage_file)) or is_shipped(entry))):
            return entry.name
    return None if others else content[0].name  # a config.yaml without any stage proves nothing


def _make(path: Path) -> Path | None:
    """Create `path` (and parents); return the topmost folder this call created, or None."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return None  # another process made it first: it is not ours to remove
    return missing[-1]


def _remove(path: Path, created: Path) -> None:
    """Delete the folder a failed command made, then the empty parents it made for it."""
    shutil.rmtree(path, ignore_errors=True)
    for parent in path.parents:
        if parent == created.parent:
            break
        try:
            parent.rmdir()  # only when empty: something else may have been put there meanwhile
        except OSError:
            break


def _empty(path: Path) -> None:
    """Delete everything in `path` except the lock file, once no other command works inside it."""
    for lock in (*(p / LOCK_FILE for p in path.resolve().parents), *path.rglob(LOCK_FILE)):
        _refuse_if_locked(lock)
    for entry in path.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # a link is removed, never followed


def _mark(path: Path, command: str | None = None) -> None:
    """Mark `path` as the tool's; a command that re-uses its folders (`run`, `clean`) names itself in the marker."""
    if not made_by_tool(path) or (command and marker_command(path) != command):
        atomic_write_text(path / MARKER, MARKER_TEXT + (f"command: {command}\n" if command else ""))


def marker_command(path: str | Path) -> str | None:
    """The command a tool-made folder's marker names (None: a folder of another command, or an older marker)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    found = [line.split(":", 1)[1].strip() for line in marker.read_text().splitlines() if line.startswith("command:")]
    return found[0] if found else None


def _check_same_command(path: Path, command: str, stage_file: str) -> None:
    """A command re-uses only its own folders: another command's finished folder (a `run` for `clean`, a
    `train` run for either) is never taken over without --overwrite."""
    if not made_by_tool(path) or not _has_content(path):
        return
    other = marker_command(path)
    if other == command or (other is None and any(path.rglob(stage_file))):  # an older folder of stages
        return
    what = f"`w2sdefense {other}`" if other else "another w2sdefense command (it holds no stage of run or clean)"
    raise UserError(f"{path} was made by {what}; `{command}` re-uses only its own folders and will not write over "
                    "it: choose another output folder, or pass --overwrite to replace it")


def _lock(path: Path) -> int:
    """Take the folder's exclusive lock and record our pid in it; refuse at once if it is held."""
    fd = _open_lock(path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(_busy(path, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path.resolve()] = fd
    return fd


def _open_lock(lock: Path, flags: int) -> int:
    """Open the lock file itself: never the file a link names, never a folder, pipe or device.

    A link planted as the lock would otherwise have its target truncated (or created) and our pid
    written into it; O_NONBLOCK keeps a pipe there from hanging the open.
    """
    try:
        fd = os.open(lock, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd is not None:
        os.close(fd)
    raise UserError(f"{lock} is not a regular file (a link, a folder, a pipe or a device), so it is no w2sdefense "
                    "lock and is never opened or written through; remove it, or choose another output folder")


def _unlock(path: Path, fd: int) -> None:
    _held.pop(path.resolve(), None)
    os.close(fd)  # closing releases the lock; the file stays, so no waiter locks a deleted inode


def lock_holder(path: str | Path) -> str | None:
    """Who holds the folder's lock ("process N"), or None when no other command does."""
    lock = Path(path) / LOCK_FILE
    if lock.parent.resolve() in _held or lock.is_symlink() or not lock.is_file():
        return None  # the tool never makes a lock that is a link: nobody holds it
    fd = _open_lock(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


def _refuse_if_locked(lock: Path) -> None:
    """Refuse when another command holds `lock` (a lock this process holds is fine)."""
    holder = lock_holder(lock.parent)
    if holder is not None:
        raise UserError(_busy(lock.parent, holder))


def _holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"process {pid}" if pid.isdigit() else "another process"


def _busy(path: Path, holder: str) -> str:
    return (f"{path} is in use by another w2sdefense command ({holder}); wait for it to finish "
            "or choose another output folder")


def _wait(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


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
    # A handler here silences Python's last-resort stderr one, so warnings would reach only the file: show them
    # on the terminal too (once, when log_to blocks nest, as `run`'s stage logs do inside run.log).
    handlers = [handler] + ([] if any(h.get_name() == _TERMINAL for h in root.handlers) else [_terminal()])
    for each in handlers:
        root.addHandler(each)
    try:
        yield
    finally:
        for each in handlers:
            root.removeHandler(each)
            each.close()


_TERMINAL = "w2sdefense-terminal"


def _terminal() -> logging.Handler:
    """Warnings and errors on stderr (the one in use now, a test's capture too), as the last-resort handler prints them."""
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    terminal.set_name(_TERMINAL)
    return terminal
