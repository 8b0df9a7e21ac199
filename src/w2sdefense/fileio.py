"""Atomic file writing, JSON/JSONL helpers and file hashing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text so that a killed process leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_folder(tmp: Path, target: Path) -> None:
    """Swap the fully written folder `tmp` in for `target`.

    A kill between the two renames leaves `target.old` (complete) and no `target`; recover_folder
    puts it back, so there is always one complete copy.
    """
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():
        old.rename(target)  # an earlier swap killed half-way
    remove_folder(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    remove_folder(old)


_FULL_BYTES = 1 << 20  # a write that fails with less free space than this failed for want of space


@contextmanager
def write_folder(target: Path) -> Iterator[Path]:
    """Yield an empty `target.partial` to write into, then swap it in for `target` (replace_folder).

    A failed block leaves no partial folder and the previous `target` as it was. A failed write is raised
    as an OSError naming `target`, a full disk as ENOSPC: torch and safetensors report one as
    'basic_ios::clear: iostream error' or as their own error type.
    """
    tmp = target.with_name(target.name + ".partial")
    remove_folder(tmp)
    try:
        tmp.mkdir(parents=True)
        yield tmp
    except BaseException as exc:  # Ctrl-C too: the previous copy stays
        code = _write_errno(tmp, exc) if isinstance(exc, Exception) else None
        remove_folder(tmp)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(target)) from exc
    follow_umask(tmp)
    replace_folder(tmp, target)


def _write_errno(folder: Path, exc: Exception) -> int | None:
    """The errno of a failed write: an OSError's own; ENOSPC when a writer's own error is a full disk."""
    if isinstance(exc, OSError):
        return exc.errno
    if "No space left on device" in str(exc) or "os error 28" in str(exc):
        return errno.ENOSPC
    try:
        full = shutil.disk_usage(folder if folder.exists() else folder.parent).free < _FULL_BYTES
    except OSError:
        full = False
    return errno.ENOSPC if full else None


def recover_folder(target: Path) -> None:
    """Undo a replace_folder killed half-way: the previous complete copy comes back as `target`."""
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():
        old.rename(target)
    remove_folder(old)
    remove_folder(target.with_name(target.name + ".partial"))  # never known to be complete


def remove_folder(path: Path) -> None:
    """Delete a folder this tool wrote (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def follow_umask(folder: Path) -> None:
    """Give the files just written under `folder` the mode open() would (safetensors writes 0600 whatever the umask)."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _umask() -> int:
    """The process's umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write pretty, key-sorted JSON (stable bytes for equal data)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Atomically write one JSON object per line."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def cache_root() -> Path:
    """Root of this tool's cache (converted models, hub data): $W2S_CACHE_DIR, else ~/.cache/w2sdefense."""
    value = os.environ.get("W2S_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "w2sdefense"


def utf8_error(path: str | os.PathLike) -> str:
    """Where a file stops being UTF-8, as 'line N: not UTF-8 text (byte 0xe9 at column 7: ...)'.

    A decoding error's own offset counts from the start of the chunk Python was decoding, not of the
    file, so the file is scanned line by line (a newline byte never sits inside a UTF-8 sequence).
    """
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"line {line_no}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1}: "
                        f"{exc.reason}); save the file as UTF-8")
    return "not UTF-8 text; save the file as UTF-8"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes; of a folder (a saved `datasets` split), of its files' relative
    paths and bytes in name order."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
