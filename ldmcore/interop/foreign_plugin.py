"""What a reader of foreign plugin weights (``residual_import``, ``ip_adapter_import``) hands to
``attach_import``, which writes the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class ForeignPlugin:
    """A plugin's weights read from a foreign source, ready to attach.

    ``tensors(model, encoder)`` gives them in the plugin's names, checked against the model built
    with ``section`` (it raises ``ConfigError`` naming what does not fit); ``folders`` are copied
    into the run (name inside the run -> where they are now)."""

    plugin: str
    section: dict[str, Any]
    tensors: Callable[[Any, torch.nn.Module], dict[str, torch.Tensor]]
    folders: dict[str, Path] = field(default_factory=dict)
