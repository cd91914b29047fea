"""How the trained parameters are spread over processes: ``trainer.strategy`` = ddp | fsdp.

Both strategies compute the same update as one process with the same global batch; they differ
in memory:

* ``ddp``: every process holds the whole model, its EMA and its optimizer state; DDP averages the
  gradients of the trainable parameters.
* ``fsdp``: the UNet is sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): each process
  holds ``1/world`` of its weights, gradients, AdamW moments and EMA. Weights are all-gathered
  for the forward and backward passes and gradients reduce-scattered (averaged). Frozen parts
  (autoencoder, frozen encoders) stay plain modules outside the optimizer; trainable condition
  encoders are small and stay replicated, their gradients averaged by one all-reduce.

Checkpoints do not depend on the strategy: ``full`` gathers sharded tensors into the same
unsharded tensors a single process would write (rank 0 writes them), and ``place`` cuts a full
tensor read from a checkpoint back into this process's shard. So a run resumes under any
strategy and any number of processes with the same global batch.

With one process both strategies are a plain single-process run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from ldmcore.distributed import Cluster, wrap


class DataParallel:
    """DDP over the trainable parameters (and the no-op strategy of a single process)."""

    #: whether every rank must take part in a forward pass of the UNet (sampling included)
    collective_forward = False

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def shard(self, model: torch.nn.Module) -> None:
        """Called after the weights are loaded and before the optimizer is built."""

    def wrap(self, objective: torch.nn.Module) -> torch.nn.Module:
        return wrap(objective, self.cluster)

    def accumulating(self, objective: torch.nn.Module, sync: bool):
        """The context of one micro-batch's backward; gradients sync only when ``sync``."""
        return nullcontext() if sync or not self.cluster.distributed else objective.no_sync()

    def after_backward(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Called once per step after the last micro-batch's backward (DDP has synced)."""

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unsharded tensors (a collective under FSDP: every rank must call it; rank 0 gets
        the tensors, the others an empty dict so that no rank holds a second full copy)."""
        return tensors

    def place(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A full tensor from a checkpoint, cut to ``like``'s shard (identity when unsharded)."""
        return full


class ShardedDataParallel(DataParallel):
    """FSDP2 on the UNet; see the module docstring."""

    collective_forward = True

    def shard(self, model: torch.nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        if not self.cluster.distributed:
            return
        unet = model.unet
        # one FSDP unit per UNet block, so that only one block's weights are gathered at a time,
        # then the rest (embeddings, input/output convolutions); every unit reshards after its
        # forward, so between steps (and after sampling) each rank holds only its shards
        for blocks in (unet.input_blocks, [unet.middle_block], unet.output_blocks):
            for block in blocks:
                fully_shard(block, reshard_after_forward=True)
        fully_shard(unet, reshard_after_forward=True)
        self._unet = unet

    def wrap(self, objective: torch.nn.Module) -> torch.nn.Module:
        return objective

    @contextmanager
    def accumulating(self, objective: torch.nn.Module, sync: bool) -> Iterator[None]:
        if not self.cluster.distributed:
            yield
            return
        self._unet.set_requires_gradient_sync(sync)  # without sync, shards' grads accumulate locally
        try:
            yield
        finally:
            self._unet.set_requires_gradient_sync(True)

    def after_backward(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of replicated (unsharded) trainable parameters in one all-reduce.

        A missing gradient counts as zero, as DDP would have it, so every rank sends the same
        tensors."""
        if not self.cluster.distributed:
            return
        plain = [p for p in params if not isinstance(p, DTensor)]
        if not plain:
            return
        for p in plain:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in plain])
        dist.all_reduce(flat)
        flat /= self.cluster.world
        offset = 0
        for p in plain:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
        """The global norm over sharded and replicated gradients together, as one process has it."""
        params = [p for p in params if p.grad is not None]
        groups = [[p for p in params if isinstance(p, DTensor)],
                  [p for p in params if not isinstance(p, DTensor)]]
        norms = []
        for group in groups:
            if group:
                norm = torch.nn.utils.get_total_norm([p.grad for p in group])
                norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not norms:
            return
        total = torch.linalg.vector_norm(torch.stack(norms))
        for group in groups:
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = self.cluster.is_main
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():  # the same order on every rank: one gather each
            value = value.full_tensor() if isinstance(value, DTensor) else value
            if keep:
                out[key] = value
        return out

    def place(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not isinstance(like, DTensor):
            return full
        full = full.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (a view that writes through), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def make_parallel(strategy: str, cluster: Cluster) -> DataParallel:
    """The strategy object for ``trainer.strategy`` (validated by the config)."""
    return ShardedDataParallel(cluster) if strategy == "fsdp" else DataParallel(cluster)
