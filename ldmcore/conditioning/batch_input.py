"""Job 2 of a condition plugin: finding its value in a batch of data (training, held-out
evaluation, training-time grids). Sampling hands values in by the plugin's name, so a plugin that
derives its value (a downsampled image, a random hole, edges) returns ``batch[name]`` when it is
there. Read data keys from the plugin's config (as the built-ins' ``input_key``), never a
hard-coded key, so the plugin works on any dataset that carries what it needs.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BatchInput:
    """The hook of job 2. The ``Conditioner`` calls it once per batch (``resolve``), drawing any
    randomness from the training step's generator; everything after reads the resolved value."""

    name: ClassVar[str]

    def batch_value(self, batch: dict[str, Any]) -> Any:
        """This condition's value in ``batch`` (default ``batch[name]``), batched as ``forward``
        takes it. Raise ``KeyError`` when it is absent: the ``Conditioner`` then names the
        plugin and the keys the batch has."""
        return batch[self.name]
