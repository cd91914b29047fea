"""Job 1 of a condition plugin: reading a value a person gives (``cond.NAME=...`` on the command
line, or any front end that sends the same JSON values), and how a web page asks for it
(``widget``, read by ``ldm serve``).

The core decodes what the person wrote exactly once (``read_value``): strict JSON where it is
JSON (``3`` -> 3, ``[0.1,0.2]`` -> a list, ``"a cat"`` -> a string), otherwise the text itself
(``a red circle``, ``edges.png``). It splits a list into grid rows, hands each row's value to the
plugin's ``parse``, and records that same plain value in ``samples.json``, from where ``ldm eval``
hands it to ``parse`` again. A plugin never sees command-line text and never decodes JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
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


class WidgetKind(str, Enum):
    """The inputs a web page can draw. Each makes the text a person would write after
    ``cond.NAME=`` on the command line; the page sends that text and the core reads it exactly
    as it reads the command line (``read_value``, then ``parse``)."""

    TEXT = "text"
    """A line of text, sent as typed (``a red circle``, ``3``, ``[[0.1,0.1,0.5,0.5,0]]``)."""
    CHOICE = "choice"
    """One of ``choices``, sent as the chosen name (``3`` for the class plugin)."""
    BOXES = "boxes"
    """Boxes drawn on the image, a name from ``choices`` each, sent as the JSON list
    ``[[x0, y0, x1, y1, "name"], ...]`` with coordinates as fractions of the image in [0, 1]."""
    LABEL_MAP = "label_map"
    """A map painted with ``choices`` (pixel value = the choice's index) or uploaded as a
    single-channel PNG; saved as a PNG file, whose path fills ``{image}`` of ``value``."""
    IMAGE = "image"
    """An uploaded PNG or JPEG, saved as it came; its path fills ``{image}`` of ``value``."""
    IMAGE_MASK = "image_mask"
    """An uploaded image and a brush mask painted over it (painted = 255, white; else 0),
    saved as two files whose paths fill ``{image}`` and ``{mask}`` of ``value``."""


FILE_KINDS = frozenset({WidgetKind.LABEL_MAP, WidgetKind.IMAGE, WidgetKind.IMAGE_MASK})
"""The kinds whose value names files: the page sends pixels, the server saves them (a page never
names a file on the server's disk)."""


@dataclass(frozen=True)
class Widget:
    """How a web page asks a person for this plugin's value (see ``UserInput.widget``)."""

    kind: WidgetKind
    label: str = ""
    """The input's title (default: the plugin's name)."""
    help: str = ""
    """One line under the input: what the value means."""
    choices: tuple[str, ...] = ()
    """CHOICE: the names offered; BOXES: a box's class names; LABEL_MAP: the classes to paint,
    by pixel value 0, 1, ..."""
    size: tuple[int, int] | None = None
    """(height, width) in pixels that files of LABEL_MAP, IMAGE and IMAGE_MASK must have; also the
    canvas BOXES are drawn on. None: any size (the page still caps it)."""
    value: str = "{image}"
    """The command-line text made from saved files (file kinds only): ``{image}``, and
    ``{mask}`` for IMAGE_MASK, become their paths, e.g. ``"{image},{mask}"``."""
    default: str = ""
    """The text a TEXT input starts with, or the name a CHOICE starts on."""


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

    def widget(self) -> Widget | None:
        """How a web page (``ldm serve``) asks a person for this value; called on the built
        encoder, so it may use the config (class names) and ``self.backbone`` (image size). The
        page sends what the widget makes as the command-line text of ``cond.NAME=``, which goes
        through ``parse`` as on the command line. Default None: a text field, read the same way."""
        return None

    def collate(self, values: list[Any]) -> Any:
        """Join single values (as ``parse`` returns them) into a batch for ``forward``."""
        if all(isinstance(v, torch.Tensor) for v in values):
            return torch.stack(values)
        return values
