"""Can `train` with `method: full` shard its model across CPU processes (FSDP over gloo)? A probe, not a test.

Run under two processes:
    torchrun --nproc_per_node 2 benchmarks/fsdp_cpu.py
and once on its own (`python benchmarks/fsdp_cpu.py`) for the one-process reference. It tries, in order:
1. accelerate's FSDP plugin with `Accelerator(cpu=True)` (what `runtime.py` would have to do): which
   distributed type accelerate picks;
2. torch's own FSDP2 (`torch.distributed.fsdp.fully_shard`) on a CPU device mesh over gloo, on a tiny
   random Llama: a few AdamW steps of full fine-tuning on fixed batches, then the full state dict gathered
   to rank 0 and compared with the same steps in one process (each rank gets half of every batch, the
   gradients are averaged, so the two must agree to float tolerance).
Each result is printed as one line and, on rank 0, written to benchmarks/results/fsdp-cpu.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForSequenceClassification

STEPS, BATCH, LENGTH = 4, 8, 16
OUT = Path(__file__).parent / "results" / "fsdp-cpu.json"


def tiny_model() -> torch.nn.Module:
    """A two-layer random Llama classifier, the same weights in every process."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    return LlamaForSequenceClassification(cfg)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed token batches (no padding) and labels."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(1, 128, (BATCH, LENGTH), generator=gen), torch.randint(0, 2, (BATCH,), generator=gen))
            for _ in range(STEPS)]


def train(model: torch.nn.Module, rank: int, world: int) -> list[float]:
    """A few AdamW steps; each rank takes its slice of every batch; returns the global mean losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for ids, labels in batches():
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = model(input_ids=ids[part], labels=labels[part]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
    return losses


def try_accelerate() -> dict:
    """Which distributed type accelerate picks for an FSDP plugin on CPU."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    try:
        acc = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
        return {"distributed_type": str(acc.distributed_type), "fsdp_applied": str(acc.distributed_type).endswith("FSDP")}
    except Exception as exc:  # the probe reports whatever stops it
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def try_fully_shard(rank: int, world: int) -> dict:
    """Train with torch's FSDP2 on a CPU mesh; return losses and the gathered state dict's checksum."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    try:
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        start = time.perf_counter()
        losses = train(model, rank, world)
        wall = time.perf_counter() - start
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        local = sum(p.numel() for p in model.parameters() if p.requires_grad and hasattr(p, "to_local")
                    and p.to_local().numel() > 0)
        return {"losses": losses, "state": state, "wall_s": wall, "sharded": local > 0}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def main() -> None:
    """One process: the reference run. Under torchrun: both probes, compared with the reference."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    if world == 1:
        model = tiny_model()
        losses = train(model, 0, 1)
        torch.save({"losses": losses, "state": model.state_dict()}, "/tmp/fsdp-cpu-reference.pt")
        print(f"reference: losses {[round(x, 5) for x in losses]}")
        return
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"date": time.strftime("%Y-%m-%d"), "platform": platform.platform(), "torch": torch.__version__,
              "processes": world, "accelerate_fsdp_plugin_on_cpu": try_accelerate()}
    shard = try_fully_shard(rank, world)
    if rank == 0:
        if "error" in shard:
            result["fully_shard_cpu"] = shard
        else:
            ref = torch.load("/tmp/fsdp-cpu-reference.pt") if Path("/tmp/fsdp-cpu-reference.pt").exists() else None
            entry = {"losses": shard["losses"], "wall_s": round(shard["wall_s"], 3)}
            if ref:
                diff = max((shard["state"][k].float() - v.float()).abs().max().item() for k, v in ref["state"].items())
                entry.update(reference_losses=ref["losses"], max_weight_difference=diff,
                             same_keys=sorted(shard["state"]) == sorted(ref["state"]))
            result["fully_shard_cpu"] = entry
        print(json.dumps(result, indent=1))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
