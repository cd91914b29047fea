"""DatasetSpec: a dataset registered through the ``register_datasets`` hook, built by name.

ldmcore's own datasets register through the same hook (``ldmcore.data.builtin``), so
``data=NAME`` finds a plugin package's dataset exactly as it finds ``digits``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset, Subset


@dataclass(frozen=True)
class DatasetSpec:
    """``build(**options)`` makes the dataset; ``held_out(**options)``, if given, items the model
    never trained on (``ldm eval`` samples from their conditions)."""

    name: str
    build: Callable[..., Dataset]
    held_out: Callable[..., Dataset] | None = None
    package: str = ""

    def dataset(self, limit: int | None = None, **options: Any) -> Dataset:
        """The dataset for ``options`` (the ``data`` config's keys), cut to ``limit`` items."""
        dataset = self.build(**options)
        if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
            dataset = Subset(dataset, range(limit))
        return dataset
