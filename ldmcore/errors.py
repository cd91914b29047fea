"""Errors a user can cause.

Every error that bad input can trigger (config, data, checkpoint, command-line value) is an
``LdmError``. The command line prints its message as one paragraph and exits with status 2;
a Python traceback is reserved for bugs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

# a value Hydra reads as this same string without quotes
_BARE = re.compile(r"[A-Za-z_./][A-Za-z0-9_./-]*")


class LdmError(Exception):
    """Base of all user-facing errors: the message says what is wrong and what is valid."""

    exit_code = 2


class ConfigError(LdmError):
    """A config value, key or plugin name is invalid."""


class DataError(LdmError):
    """A dataset path or a sample is unusable."""


class CheckpointError(LdmError):
    """A checkpoint is missing, truncated, not safetensors, or does not fit the model."""


class PluginError(LdmError):
    """A plugin is unknown, clashes with another, or breaks the plugin contract."""


class PluginClash(PluginError):
    """Two installed packages register the same condition name."""


class Interrupted(LdmError):
    """A signal stopped a training run; its message says what was kept and how to continue.
    Unlike other errors it keeps the run folder, and its exit status is 128 + the signal."""


class TrainingDiverged(LdmError):
    """The loss became non-finite; the last good checkpoint is kept."""


def first_few(items: list[str], shown: int) -> str:
    """The first ``shown`` items joined by commas, then how many more: every message that lists
    many names (valid choices, checkpoint keys, files) says it this one way."""
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def nearest(name: str, valid: Iterable[str], n: int = 3,
            write: Callable[[str], str] | None = None) -> str:
    """Return a phrase naming the valid choices closest to ``name`` (for error messages).
    With ``write`` (choice -> the command-line words that use it), each close choice is shown
    as those words in backticks, so the suggestion works when pasted."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if close:
        shown = [f"`{write(c)}`" if write else repr(c) for c in close]
        return "did you mean " + " or ".join(shown) + "?"
    if not valid:
        return "there are no valid choices here."
    return f"valid choices: {first_few([repr(v) for v in valid], 12)}."


def override_text(value: Any) -> str:
    """``value`` as it is written after ``KEY=`` on the command line (Hydra's grammar): what a
    suggestion prints so that it can be pasted back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if isinstance(value, str) and (not _BARE.fullmatch(text) or text.lower() in ("true", "false", "null")):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text
