"""``Context``: what the rules of one case share (its encoder, batch and values, built lazily),
and how a plugin's exception inside a rule becomes that rule's failure."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ldmcore.conditioning import ConditionEncoder, Conditioner, EncoderConfig, read_value
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken, PluginCase
from ldmcore.testing.kit import dataset_batch, kit_backbone


class Context:
    """Lazily built pieces (encoder, batch, value) shared by the rules of one case."""

    def __init__(self, case: PluginCase, tmp: Path) -> None:
        self.case, self.tmp = case, tmp
        self.spec = kit_backbone(case)

    def config(self, **update: Any) -> EncoderConfig:
        try:
            return self.case.encoder.Config(**{**self.case.config, **update})
        except ValidationError as err:
            raise Broken(f"its Config rejects the case's config {dict(self.case.config)}: "
                          f"{err.errors()[0]['msg']}") from None

    def encoder(self, seed: int = 0, **update: Any) -> ConditionEncoder:
        torch.manual_seed(seed)
        try:
            return self.case.encoder(self.config(**update), self.spec)
        except Broken:
            raise
        except Exception as exc:
            raise Broken(f"constructing it failed: {type(exc).__name__}: {exc}") from None

    def batch(self) -> dict[str, Any]:
        if self.case.batch is not None:
            return self.case.batch()
        # a copy: a rule (or a plugin) adding keys must not change the cached batch
        return dict(dataset_batch(self.case.dataset, self.case.image_channels, self.case.batch_size))

    def value(self, enc: ConditionEncoder, batch: dict[str, Any] | None = None) -> Any:
        batch = self.batch() if batch is None else batch
        try:
            return enc.batch_value(batch)
        except KeyError as exc:
            raise Broken(f"batch_value() found no value ({exc}) in a batch of the "
                          f"{self.case.dataset!r} dataset with keys {sorted(batch)}; set "
                          f"PluginCase.dataset or PluginCase.batch to data that carries it.") from None

    def conditioner(self, enc: ConditionEncoder) -> Conditioner:
        try:
            return Conditioner({self.case.name: enc})
        except LdmError as err:
            raise Broken(str(err)) from None

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NotImplementedError as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1].name
            raise Broken(f"{where}() is not implemented." if what.startswith(where) else
                          f"{what} failed: {where}() is not implemented.") from None
        except Broken:
            raise
        except Exception as exc:
            raise Broken(f"{what} raised {type(exc).__name__}: {exc}") from None

    def cli_values(self, bad: bool = False) -> list[Any]:
        """The case's command-line strings as ``parse`` receives them: decoded once by
        ``read_value``, as ``ldm sample`` decodes ``cond.<name>=...``."""
        values = self.case.bad_cli_values if bad else self.case.cli_values
        if callable(values):
            values = values(self.tmp)
        return [read_value(str(v)) for v in values]
