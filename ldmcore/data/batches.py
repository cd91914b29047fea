"""Endless, resumable batches: batch k depends only on (seed, k), never on earlier batches.

That makes resuming exact without saving a data-loader position: a resumed run at step k
draws the same batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ldmcore.data.datasets import collate
from ldmcore.errors import LdmError


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one training step (stream separates data order from noise)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + stream)


class StepBatchSampler(Sampler[list[int]]):
    """Yields index lists for steps ``start, start+1, ...``: a seeded draw without replacement.

    ``batch_size`` is the global batch; with ``world`` processes, process ``rank`` gets its
    contiguous share of the same global draw (the distributed sampler of data parallelism).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, *, rank: int = 0,
                 world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} does not split over {world} processes")
        self.size, self.batch_size, self.seed, self.start = size, min(batch_size, size), seed, start
        self.rank, self.world = rank, world

    def indices(self, step: int) -> list[int]:
        drawn = torch.randperm(self.size, generator=step_generator(self.seed, step, 1))[: self.batch_size]
        share = len(drawn) // self.world
        return drawn[self.rank * share:(self.rank + 1) * share].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1


class InMemoryBatches:
    """The whole (deterministically transformed) dataset held as collated tensors."""

    def __init__(self, dataset: Dataset) -> None:
        self.data = collate([dataset[i] for i in range(len(dataset))])  # type: ignore[arg-type]
        self.size = len(dataset)  # type: ignore[arg-type]

    def take(self, idx: list[int]) -> dict[str, Any]:
        index = torch.tensor(idx)
        return {k: (v[index] if isinstance(v, torch.Tensor) else [v[i] for i in idx])
                for k, v in self.data.items()}


def loader_batches(dataset: Dataset, sampler: StepBatchSampler, num_workers: int = 0
                   ) -> Iterator[dict[str, Any]]:
    """Endless batches read (and augmented) by ``num_workers`` worker processes."""
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
    return _plain_errors(iter(loader))


def _plain_errors(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A user error raised in a loader worker comes back wrapped in the worker's traceback;
    re-raise it with its own one-paragraph message."""
    while True:
        try:
            batch = next(batches)
        except LdmError as err:
            lines = [ln for ln in str(err).splitlines() if ln.strip()]
            if len(lines) > 1 and "worker" in lines[0]:
                raise type(err)(lines[-1].partition(": ")[2] or lines[-1]) from None
            raise
        yield batch


def memory_batches(held: InMemoryBatches, sampler: StepBatchSampler) -> Iterator[dict[str, Any]]:
    return (held.take(idx) for idx in sampler)
