"""Device choice and per-stage peak-memory windows."""

from __future__ import annotations

import sys

import pytest
import torch

from w2sdefense.config import RuntimeConfig
from w2sdefense.errors import UserError
from w2sdefense.runtime import _resolve, peak_memory_mb, reset_peak_memory


def test_cpu_is_fp32_and_cuda_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _resolve(RuntimeConfig()) == (False, False)
    with pytest.raises(UserError, match="no CUDA device"):
        _resolve(RuntimeConfig(device="cuda"))


def test_auto_picks_cuda_with_bf16_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert _resolve(RuntimeConfig()) == (True, True)
    assert _resolve(RuntimeConfig(precision="fp32")) == (True, False)
    assert _resolve(RuntimeConfig(device="cpu")) == (False, False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")
def test_peak_memory_window_resets_between_stages():
    import mmap

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    # A fresh anonymous mapping, written through: 64 MiB of new resident pages whatever the allocator
    # holds already (a tensor may reuse memory earlier tests freed, and then raise no peak).
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\1" * (64 * 2**20))
    during = peak_memory_mb(cpu)["peak_memory_mb"]
    block.close()
    reset_peak_memory(cpu)
    after = peak_memory_mb(cpu)
    assert after["peak_memory_kind"] == "process_peak_rss_since_stage_start"
    assert during - after["peak_memory_mb"] > 50


def test_a_thread_count_far_past_the_cores_is_refused_before_torch_crashes():
    import os

    from w2sdefense.runtime import set_threads

    before = torch.get_num_threads()
    with pytest.raises(UserError, match="runtime.num_threads=100000"):
        set_threads(100000)
    assert torch.get_num_threads() == before  # nothing changed
    set_threads(os.cpu_count() or 1)  # the machine's own count is fine
    torch.set_num_threads(before)


def test_the_command_line_tears_the_process_group_down_before_exit(monkeypatch):
    import torch.distributed as dist

    from w2sdefense import cli

    destroyed = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: destroyed.append(True))
    for argv in (["w2sdefense", "list"], ["w2sdefense", "frobnicate"]):  # after a command, and after a usage error
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit):
            cli.main()
    assert destroyed == [True, True]
