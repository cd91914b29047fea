"""Errors a user can cause.

Every error that bad input can trigger (config, data, checkpoint, command-line value) is an
``LdmError``. The command line prints its message as one paragraph and exits with status 2;
a Python traceback is reserved for bugs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def nearest(name: str, valid: Iterable[str], n: int = 3) -> str:
    """Return a phrase naming the valid choices closest to ``name`` (for error messages)."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not valid:
        return "there are no valid choices here."
    return f"valid choices: {first_few([repr(v) for v in valid], 12)}."
