"""What the page sends, as the words of ``ldm sample``.

The page writes what a person would type after ``cond.NAME=`` (a widget makes that text; a file
input sends its pixels, which the server saves and names). The server turns the request into
the same ``key=value`` words the command line takes and reads them with the command line's own
``parse_request``, so a value means the same thing in both, fails with the same message, and
the words shown on the page are the command that reproduces the result.

A request may not name a file on the server's disk: the server would read it (a plugin's
``parse`` opens the paths it is given). Typed text that reads as a path (a ``/`` or ``\\``, a
leading ``~``, or the name of something in the server's working folder) is refused; files
arrive only as uploads, saved by the server inside the run folder.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pydantic import Field

from ldmcore.conditioning import FILE_KINDS, Widget, read_value
from ldmcore.errors import ConfigError
from ldmcore.schema import Strict
from ldmcore.serve.uploads import FileInput, saved_value


class WebRequest(Strict):
    """One press of "sample" on the page. Unset sampler settings keep the run's own."""

    cond: dict[str, str] = Field(default_factory=dict, description="plugin -> the text of "
                                 "cond.NAME= (typed or made by its widget)")
    files: dict[str, dict[str, FileInput]] = Field(default_factory=dict, description="plugin -> "
                                                   "slot (image, mask) -> the file")
    n: int = Field(4, ge=1, description="samples")
    seed: int = Field(0, ge=0, lt=2**62)
    sampler: str | None = Field(None, max_length=100)
    steps: int | None = Field(None, ge=1, le=1000)
    sigmas: str | None = Field(None, max_length=100)
    eta: float | None = None
    guidance: float | None = Field(None, ge=-100, le=100)
    plugin_guidance: dict[str, float] = Field(default_factory=dict)


def sample_words(req: WebRequest, run: Path, widgets: dict[str, Widget | None],
                 inputs: Path) -> tuple[list[str], dict[str, str]]:
    """The ``ldm sample`` words of ``req`` (uploads saved under ``inputs``), and the mistakes
    found per plugin (plugin -> message), so each shows beside its input."""
    errors: dict[str, str] = {}
    cond: dict[str, str] = {}
    for name in [*req.cond, *req.files]:
        if name not in widgets:
            errors[name] = (f"cond.{name} names no condition of this model; its conditions: "
                            f"{', '.join(widgets) or 'none'}.")
    for name, widget in widgets.items():
        try:
            cond[name] = _value(name, widget, req, inputs)
        except ConfigError as err:
            errors[name] = str(err)
    words = [f"run={run}", f"n={req.n}", f"seed={req.seed}"]
    words += [f"cond.{name}={text}" for name, text in cond.items()]
    settings = {"sampler": req.sampler, "steps": req.steps, "sigmas": req.sigmas, "eta": req.eta,
                "guidance": req.guidance}
    words += [f"{key}={value}" for key, value in settings.items() if value is not None]
    words += [f"guidance.{name}={scale}" for name, scale in req.plugin_guidance.items()]
    return words, errors


def _value(name: str, widget: Widget | None, req: WebRequest, inputs: Path) -> str:
    files = widget is not None and widget.kind in FILE_KINDS
    if files:
        if name in req.cond:
            raise ConfigError(f"cond.{name} is a file input: upload the image (the page never "
                              f"reads a file the request names).")
        if name not in req.files:
            raise ConfigError(f"cond.{name}: give its {widget.kind.value.replace('_', ' ')}.")
        return saved_value(name, widget, req.files[name], inputs)
    if name in req.files:
        raise ConfigError(f"cond.{name} takes text, not a file.")
    if name not in req.cond or not req.cond[name].strip():
        raise ConfigError(f"cond.{name}: give a value.")
    refuse_paths(name, read_value(req.cond[name].strip()))
    return req.cond[name]


def refuse_paths(name: str, value: Any) -> None:
    """Refuse a typed value holding a string that names, or could name, a file on this disk."""
    if isinstance(value, list):
        for item in value:
            refuse_paths(name, item)
    elif isinstance(value, dict):
        for item in value.values():
            refuse_paths(name, item)
    elif isinstance(value, str) and _looks_like_path(value.strip()):
        raise ConfigError(f"cond.{name}: {value!r} reads as a path on the server's disk, which a "
                          f"request may not name (the server would open it); upload files through "
                          f"their inputs, and write text without / or \\.")


def _looks_like_path(text: str) -> bool:
    if not text:
        return False
    if "/" in text or "\\" in text or text.startswith("~") or "\0" in text:
        return True
    try:
        return Path(text).exists()
    except OSError:  # a name too long for the file system names nothing
        return False


def shown_command(words: list[str], extra: list[str]) -> str:
    """The shell command of ``words`` (plus ``extra``, the server's own settings)."""
    return "ldm sample " + " ".join(shlex.quote(w) for w in [*words, *extra])
