"""Progress bars of every long command (training, stage 1, ``ldm sample``, ``ldm eval``,
imports and exports): tqdm on stderr, shown only when it is a terminal and the command's
``progress`` setting is on, so logs, pipes and CI output stay free of bar redraws."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm


def shows_progress(wanted: bool = True) -> bool:
    """Whether a bar is drawn: asked for, and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(wanted and isatty is not None and isatty())


def progress_bar(total: int | None, desc: str, wanted: bool = True, **kwargs: Any) -> tqdm:
    """A bar of ``total`` units named ``desc`` (a disabled one, which still counts, when
    ``shows_progress`` says no)."""
    return tqdm(total=total, desc=desc, disable=not shows_progress(wanted), dynamic_ncols=True,
                file=sys.stderr, **kwargs)


def step_counter(bar: tqdm) -> Callable[[dict[str, Any]], None]:
    """A sampler ``callback`` that advances ``bar`` by one per sampler step."""
    return lambda _info: bar.update(1)
