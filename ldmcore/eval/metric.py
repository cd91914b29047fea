"""MetricSpec: a fidelity metric a plugin registers for ``ldm eval`` (hook ``register_metrics``).

``ldm eval`` does not know the conditions it scores: for each condition a run enables it runs
the metrics registered for that condition's name, on the dataset they declare meaningful.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Score = Callable[[torch.Tensor, Any, dict[str, Any]], dict[str, Any]]
Baseline = Callable[[Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class MetricSpec:
    """A metric of condition ``condition``: ``score(images, value, batch)`` -> report entries.

    ``baseline(value, batch)`` is what the metric reads without a model; ``datasets`` where it
    means something (None: any); ``averages``: also reported for the mean of K samples;
    ``reads_data``: it needs the data items, not only the condition value; ``against_null``:
    also reported for samples of the model without this condition (its null), as ``*_null``.
    """

    condition: str
    name: str
    score: Score
    baseline: Baseline | None = None
    datasets: tuple[str, ...] | None = None
    averages: bool = False
    reads_data: bool = False
    against_null: bool = False
    package: str = ""

    def applies_to(self, dataset: str, has_data: bool) -> bool:
        """Whether the metric scores samples of ``dataset`` (``has_data``: items are at hand)."""
        return (self.datasets is None or dataset in self.datasets) and (has_data or not self.reads_data)
