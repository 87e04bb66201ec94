"""Multi-process data parallel plumbing (``torchrun``): joining the group, rank and world size.

Each process builds the same model (``DistributedDataParallel`` broadcasts rank 0's weights),
takes every ``world_size``-th example of each optimiser step (see
:func:`koemo.training.trainer.accumulate_step`) and DDP averages the gradients; rank 0 writes the
bundle. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os

import torch


def to_device(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str = "cpu") -> tuple[int, int, str]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1).

    gloo on CPU, nccl on CUDA (each process on its ``LOCAL_RANK`` GPU). Returns (rank, world, device).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    rank, world = dist_info()
    return rank, world, device


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Add up every process's ``sums`` (each saw its own share of the examples)."""
    import torch.distributed as dist

    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
