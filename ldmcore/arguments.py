"""Command-line words of the ``ldm`` commands: ``key=value`` options (validated by a pydantic
model) and positionals, each mistake a ``ConfigError`` that names the word and what is valid."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ldmcore.errors import ConfigError, nearest
from ldmcore.schema import format_validation_error

Options = TypeVar("Options", bound=BaseModel)


def key_values(args: list[str], allowed: set[str]) -> dict[str, str]:
    """``key=value`` words as a dict; any other word, or an unknown key, is an error."""
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"unexpected argument {arg!r}: {nearest(key, allowed)} "
                              f"(write key=value).")
        out[key] = value
    return out


def positional(args: list[str], names: tuple[str, ...], usage: str) -> tuple[list[str], list[str]]:
    """(the words without ``=``, which must be as many as ``names``; the ``key=value`` words)."""
    pos = [a for a in args if "=" not in a]
    if len(pos) != len(names):
        raise ConfigError(f"expected {' '.join(names)}, got {pos or 'nothing'}; usage: {usage}")
    return pos, [a for a in args if "=" in a]


def parse_options(args: list[str], model: type[Options], **parsed: object) -> Options:
    """``key=value`` words validated by ``model`` (a pydantic model: the options' types,
    defaults and ``--help``), with fields the caller ``parsed`` itself; an unknown key or a bad
    value names the key."""
    opts = key_values(args, set(model.model_fields) - set(parsed))
    try:
        return model.model_validate({**opts, **parsed})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=model, write_value=str)) from None
