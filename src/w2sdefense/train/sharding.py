"""Full fine-tuning sharded across processes with torch's FSDP2 (`fully_shard`), on CPU (gloo) or GPU.

accelerate applies its FSDP plugin on GPUs only (on CPU it falls back to data parallelism), so the
loop shards by hand when `runtime.fsdp` is set: each transformer block (the classes a model names in
`_no_split_modules`) becomes one FSDP unit, then the whole model. Parameters turn into DTensors that hold
each process's shard; the optimizer is built on them afterwards, so its state is sharded too.
"""

from __future__ import annotations

import logging

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from w2sdefense.runtime import Runtime

log = logging.getLogger(__name__)


def block_classes(model: torch.nn.Module) -> set[str]:
    """The class names of the transformer blocks, as every Hugging Face model inside `model` lists them."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """Shard `model` in place across the processes; returns it (its parameters are now DTensors)."""
    model.to(rt.device)
    mesh = init_device_mesh(rt.device.type, (rt.accelerator.num_processes,))
    blocks = block_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in blocks and m is not model]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    log.info("FSDP: %d blocks sharded across %d processes", len(units), rt.accelerator.num_processes)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` holds FSDP2 shards (DTensor parameters)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process's CPU (empty elsewhere); every process must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
