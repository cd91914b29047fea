"""Job 1 of a condition plugin: reading a value a person gives (``cond.NAME=...`` on the command
line, or any front end that sends the same JSON values).

The core decodes what the person wrote exactly once (``read_value``): strict JSON where it is
JSON (``3`` -> 3, ``[0.1,0.2]`` -> a list, ``"a cat"`` -> a string), otherwise the text itself
(``a red circle``, ``edges.png``). It splits a list into grid rows, hands each row's value to the
plugin's ``parse``, and records that same plain value in ``samples.json``, from where ``ldm eval``
hands it to ``parse`` again. A plugin never sees command-line text and never decodes JSON.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch


def read_value(text: str) -> Any:
    """What a person wrote, as strict JSON reads it (``"3"`` -> 3, ``"[1,2]"`` -> [1, 2]), else
    the text itself. ``NaN`` and ``Infinity`` are not JSON numbers: they stay text, so a plugin
    refuses them by name instead of receiving a float that would blank the images."""
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:  # JSONDecodeError is a ValueError
        return text


class UserInput:
    """The hooks of job 1. Defaults: a value passes through ``parse`` unchanged, and ``collate``
    stacks tensors (anything else stays a list)."""

    list_value: ClassVar[bool] = False
    """True when one value is itself a JSON list (layout's boxes): then a list of such lists,
    not a plain list, gives one grid row per item."""

    @classmethod
    def parse(cls, value: Any) -> Any:
        """One value as a person gave it (see ``read_value``: a number, a string, a list, an
        object) -> one value ready for ``collate``. Raise ``ConfigError`` naming the value and
        what is valid, e.g. ``cond.palette='(0.9,0.1,0.1)' is not a colour; write three numbers
        from 0 to 1``. A path arrives as a string; a number where text is expected arrives as a
        number (``str(value)`` it). Override as a classmethod, or as a plain method when parsing
        needs the instance's config (layout's class names); the core always calls it on the
        built encoder."""
        return value

    def collate(self, values: list[Any]) -> Any:
        """Join single values (as ``parse`` returns them) into a batch for ``forward``."""
        if all(isinstance(v, torch.Tensor) for v in values):
            return torch.stack(values)
        return values
