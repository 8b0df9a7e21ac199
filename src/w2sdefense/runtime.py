"""Pick the device and precision once per process, and build the one Accelerator everything shares."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch
from accelerate import Accelerator, PartialState

from w2sdefense.config import RuntimeConfig
from w2sdefense.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """The resolved device, the weight dtype models load in, and the accelerator."""

    accelerator: Accelerator
    dtype: torch.dtype
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard full fine-tuning across processes (train/sharding.py)

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.accelerator.is_main_process


def _resolve(cfg: RuntimeConfig) -> tuple[bool, bool]:
    """Return (use_cuda, use_bf16) from the config and the hardware."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("runtime.device=cuda but no CUDA device is visible; use runtime.device=auto")
    use_cuda = cuda and cfg.device != "cpu"
    if cfg.precision == "bf16" and use_cuda and not torch.cuda.is_bf16_supported():
        raise UserError("runtime.precision=bf16 but this GPU does not support bf16; use fp32")
    if cfg.precision == "auto":
        use_bf16 = use_cuda and torch.cuda.is_bf16_supported()
    else:
        use_bf16 = cfg.precision == "bf16"
    return use_cuda, use_bf16


MAX_THREADS = 256  # runtime.num_threads above this, and above 4 threads a core, is refused


def set_threads(num_threads: int | None) -> None:
    """Use every core this process may run on unless told otherwise."""
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            num_threads = os.cpu_count() or 1
        # Under several processes per machine (torchrun on CPU), share the cores.
        num_threads = max(1, num_threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = os.cpu_count() or 1
    if num_threads > max(MAX_THREADS, 4 * cores):  # torch's thread pool crashes the process (SIGSEGV) far past the cores
        raise UserError(f"runtime.num_threads={num_threads} is far more than this machine's {cores} cores; give at "
                        f"most {max(MAX_THREADS, 4 * cores)}, or leave it unset to use every core")
    torch.set_num_threads(num_threads)


def make_runtime(cfg: RuntimeConfig) -> Runtime:
    """Create the Accelerator (single process, torchrun or `accelerate launch`) and the dtype."""
    use_cuda, use_bf16 = _resolve(cfg)
    set_threads(cfg.num_threads)
    # `batch_size` is the global batch: models/batching.ShardedBatches cuts it across processes.
    accelerator = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if use_bf16 else "no")
    # Weights load in bf16 on GPUs (an 8B student must). On CPU `auto` stays fp32 (faster and exact there), and
    # an explicit `precision: bf16` takes the GPU's path: bf16 weights under bf16 autocast (the tests run it).
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    # One process has nothing to shard; accelerate's own FSDP (an `accelerate launch` config) shards already.
    fsdp = cfg.fsdp and accelerator.num_processes > 1 and getattr(accelerator.state, "fsdp_plugin", None) is None
    return Runtime(accelerator, dtype, cfg.gradient_checkpointing, fsdp)


def is_main_process() -> bool:
    """Whether this process prints and writes (the only one outside torchrun or `accelerate launch`), as the
    runtime made in it (make_runtime) says."""
    return PartialState().is_main_process


def _peak_rss_kb() -> int | None:
    """The process's resident-set peak since the last reset (Linux VmHWM), if readable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mb(device: torch.device) -> dict:
    """Peak memory of the current window: CUDA allocator peak on GPU, else peak resident set."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_memory_kind": "cuda_max_allocated"}
    hwm = _peak_rss_kb()
    if hwm is not None and _rss_window_started:
        return {"peak_memory_mb": hwm / 1024, "peak_memory_kind": "process_peak_rss_since_stage_start"}
    # Without a resettable peak this is the whole process's peak so far (monotonic across stages).
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "process_max_rss"}


_rss_window_started = False  # True once the RSS peak has been reset successfully


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak window: the CUDA allocator's, or the process's RSS peak on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    global _rss_window_started
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # Linux: reset VmHWM to the current resident set
        _rss_window_started = True
    except OSError:
        pass


def shutdown_distributed() -> None:
    """Tear down the process group (torchrun) before the interpreter exits. Left alive, gloo's threads are destroyed
    during the interpreter's own teardown, and a finished stage dies with `terminate called without an active
    exception` (SIGABRT) at random, so torchrun reports it failed. A no-op without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
