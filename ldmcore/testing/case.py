"""What a plugin author hands the kit (``PluginCase``) and how a broken rule is reported."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ldmcore.conditioning import ConditionEncoder


class ConformanceError(AssertionError):
    """A plugin breaks one or more conformance rules; ``rules`` names them."""

    def __init__(self, plugin: str, failures: dict[str, str]) -> None:
        self.plugin, self.failures, self.rules = plugin, failures, list(failures)
        lines = [f"plugin {plugin!r} breaks rule {rule!r}: {why}" for rule, why in failures.items()]
        super().__init__("\n".join(lines))


class Broken(Exception):
    """Raised inside a rule; the kit turns it into a ConformanceError naming the rule."""


@dataclass
class PluginCase:
    """What the kit needs to exercise one condition encoder.

    ``cli_values``: strings a user writes as ``cond.<name>=...`` (or a function of a temporary
    folder returning them, e.g. to write a PNG first); at least one, two or more to check that
    samples encode independently. ``bad_cli_values``: strings (or such a function) ``parse`` must
    reject with an ``LdmError``. ``dataset``: a built-in dataset whose batches carry this
    condition's value (read through ``batch_value``); or ``batch``, a function returning a
    collated batch. ``plugin``: the hook module, to check registration and shipped configs.
    """

    encoder: type[ConditionEncoder]
    config: Mapping[str, Any] = field(default_factory=dict)
    cli_values: Sequence[str] | Callable[[Path], Sequence[str]] = ()
    bad_cli_values: Sequence[str] | Callable[[Path], Sequence[str]] = ()
    dataset: str = "digits"
    image_channels: int = 1
    batch: Callable[[], dict[str, Any]] | None = None
    plugin: ModuleType | object | None = None
    batch_size: int = 4

    @property
    def name(self) -> str:
        return getattr(self.encoder, "name", "") or self.encoder.__qualname__
