"""Faults and hostile values through the CLI's main, in process: one `error:` line naming the path or setting,
exit code 2, no traceback, nothing half-written left."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from w2sdefense import cli


def _main(monkeypatch, capsys, *args: str) -> str:
    """Run `w2sdefense ARGS` in this process; return its one error line (it must exit 2)."""
    monkeypatch.setattr(sys, "argv", ["w2sdefense", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _data(folder: Path, rows: int = 24) -> Path:
    """train/dev/test.jsonl whose words give the label away."""
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [json.dumps({"text": f"word{i % 2} row {i}", "label": i % 2}) for i in range(rows)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    data, ro = _data(tmp_path / "data"), tmp_path / "ro"
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):  # as on a disk mounted read-only
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(ro / "p"), "--set", "poison.count=2")
    assert line.startswith(f"error: {ro}") and "read-only file system" in line and "writable disk" in line
    assert not ro.exists()


def test_evaluate_refuses_an_unwritable_out_before_any_work(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    line = _main(monkeypatch, capsys, "evaluate", "--model", "tiny-llama", "--data", str(tmp_path / "no-such-poison"),
                 "--out", str(locked / "m.json"))
    assert f"cannot write {locked / 'm.json'}: {locked} is not writable" in line


def test_a_full_disk_at_the_lock_leaves_no_folder(tmp_path, monkeypatch, capsys):
    data, out = _data(tmp_path / "data"), tmp_path / "full" / "p"

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)  # the lock records our pid with os.pwrite
    line = _main(monkeypatch, capsys, "poison", "--data", str(data), "--out", str(out), "--set", "poison.count=2")
    assert line.startswith("error: no space left on device; free some space")
    assert not (tmp_path / "full").exists()
