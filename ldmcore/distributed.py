"""Data parallelism under ``torchrun``: process group, device, and who writes files.

``torchrun --nproc-per-node N -m ldmcore.cli train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; without them everything here is a no-op single process. Under torchrun a process
group is joined even for N = 1, so one GPU already exercises the NCCL code paths (DDP or FSDP of
one rank). The backend is chosen from the device: NCCL on CUDA, gloo on CPU. Only rank 0 writes
the run folder; every rank reads the same checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    grouped: bool = False  # joined a process group (launched by torchrun, any world size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether collectives run: under torchrun, even with one process."""
        return self.grouped

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a scalar over all ranks (for logging and the finite-loss check)."""
        if not self.distributed:
            return value
        value = value.detach().float().to(self.device, copy=True)  # NCCL reduces device tensors
        dist.all_reduce(value)
        return value / self.world


def connect(timeout_min: int = 30) -> Cluster:
    """Join the process group that torchrun describes in the environment (once per process)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:  # not under torchrun
        return Cluster(device=device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    return Cluster(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   device=device, grouped=True)


def wrap(module: torch.nn.Module, cluster: Cluster) -> torch.nn.Module:
    """DDP over the module's trainable parameters (frozen ones are neither synced nor stepped)."""
    if not cluster.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [cluster.device.index] if cluster.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
