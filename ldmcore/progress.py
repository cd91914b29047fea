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


class Stages:
    """A bar over the named stages of a command whose parts cannot be counted finer (an import:
    read, convert, write): ``start(name)`` ends the stage before and names the next."""

    def __init__(self, count: int, desc: str, wanted: bool = True) -> None:
        self.bar = progress_bar(count, desc, wanted, bar_format="{desc}: {n}/{total} {postfix}")
        self.started = False

    def start(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.set_postfix_str("done")
        self.bar.close()
