"""Random draws for a training batch that do not depend on how the batch is split.

Under data parallelism each process holds ``1/world`` of the global batch. ``BatchRandom``
draws every random tensor for the *global* batch from one seeded generator and keeps this
process's rows, so N processes see exactly the numbers one process would see for the whole
batch: a distributed run reproduces the single-process run with the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchRandom:
    generator: torch.Generator | None = None
    rank: int = 0
    world: int = 1

    def _mine(self, x: torch.Tensor, local: int) -> torch.Tensor:
        return x[self.rank * local:(self.rank + 1) * local]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal of ``shape`` (first axis = local batch), drawn on the CPU."""
        x = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.generator)
        return self._mine(x, shape[0])

    def rand(self, n: int) -> torch.Tensor:
        return self._mine(torch.rand(n * self.world, generator=self.generator), n)

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._mine(torch.randint(0, high, (n * self.world,), generator=self.generator), n)


def as_batch_random(rng: BatchRandom | torch.Generator | None) -> BatchRandom:
    return rng if isinstance(rng, BatchRandom) else BatchRandom(rng)
