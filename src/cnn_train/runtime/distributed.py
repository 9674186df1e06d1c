"""Several processes, one run: torchrun's environment, the process group, and the few collectives we use.

`torchrun --nproc_per_node=N $(which cnn-train) ...` starts N copies; each reads RANK / WORLD_SIZE /
LOCAL_RANK, joins one process group (NCCL on CUDA, gloo on CPU), trains on its shard of every global batch
and all-reduces its metric sums. Only rank 0 prints bars and writes files. Without torchrun nothing here
does anything.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from cnn_train.runtime.errors import UserError
from cnn_train.runtime.world import World


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (once per process); returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not world.active:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun: local rank {world.local_rank} but only {torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over all processes, in place (a no-op for one process)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's rows of `t`, in rank order (`t` itself for one process): what a ranking metric needs."""
    if not active():
        return t
    count = torch.tensor([len(t)], device=t.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def _all_reduce_int(value: int, device: torch.device, op: dist.ReduceOp) -> int:
    if not active():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def all_max(value: int, device: torch.device) -> int:
    """The largest `value` over all processes (e.g. the signal any one of them got; 0 for none)."""
    return _all_reduce_int(value, device, dist.ReduceOp.MAX)


def all_min(value: int, device: torch.device) -> int:
    """The smallest `value` over all processes (e.g. whether every one of them has images for a step)."""
    return _all_reduce_int(value, device, dist.ReduceOp.MIN)


def broadcast(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere, so every rank evaluates the weights rank 0 saves."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)
