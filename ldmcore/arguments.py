"""Command-line words of the ``ldm`` commands: ``key=value`` options, positionals and booleans,
each mistake a ``ConfigError`` that names the word and what is valid."""

from __future__ import annotations

from ldmcore.errors import ConfigError, nearest


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


def flag(opts: dict[str, str], key: str, default: bool) -> bool:
    """Pop the boolean option ``key`` from ``opts`` (true/false, 1/0, yes/no)."""
    value = opts.pop(key, str(default)).lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={value!r} is not a boolean; write {key}=true or {key}=false.")
    return value in ("true", "1", "yes")


def positional(args: list[str], names: tuple[str, ...], usage: str) -> tuple[list[str], list[str]]:
    """(the words without ``=``, which must be as many as ``names``; the ``key=value`` words)."""
    pos = [a for a in args if "=" not in a]
    if len(pos) != len(names):
        raise ConfigError(f"expected {' '.join(names)}, got {pos or 'nothing'}; usage: {usage}")
    return pos, [a for a in args if "=" in a]
