"""Comma lists on the ``ldm sample`` / ``ldm eval`` command line: ``guidance=1,3,5
sampler=euler,dpmpp_2m`` asks for every combination (3 x 2 = 6), the last key varying fastest,
as Hydra's basic sweeper orders a multirun.

Only keys whose values never hold a comma may be lists (numbers, sampler and noise-level names,
seeds): a condition value (``cond.text="a cat, a dog"``) or a path keeps its commas, and a value
in brackets (``guidance_interval=[0.3,5]``) is one value.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from ldmcore.errors import ConfigError


@dataclass(frozen=True)
class Combination:
    """One element of the product: the swept keys' values, and the full argument list."""

    values: dict[str, str]
    args: list[str]

    @property
    def label(self) -> str:
        """``guidance=3 sampler=euler``: what a contact-sheet cell is captioned with."""
        return " ".join(f"{k}={v}" for k, v in self.values.items())

    @property
    def folder(self) -> str:
        """``guidance=3_sampler=euler``: a folder name (characters a file system may refuse
        become ``-``)."""
        return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(f"{k}={v}" for k, v in self.values.items()))


def swept(args: list[str], keys: set[str], prefixes: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The keys of ``args`` (``keys``, or starting with one of ``prefixes``) given as comma lists,
    with their values in order. An empty item (``guidance=1,,3``) is an error."""
    lists = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        sweepable = key in keys or key.startswith(prefixes)
        if sep and sweepable and "," in value and not value.lstrip().startswith("["):
            items = [v.strip() for v in value.split(",")]
            if not all(items):
                raise ConfigError(f"{arg!r} has an empty item; write a comma list such as "
                                  f"{key}=1,3,5.")
            if key in lists:
                raise ConfigError(f"{key} is given twice as a list; give it once ({key}=A,B).")
            lists[key] = items
    return lists


def combinations(args: list[str], lists: dict[str, list[str]]) -> list[Combination]:
    """One ``Combination`` per element of the product of ``lists``, in order (last key fastest),
    each with ``args`` where every list is replaced by its value."""
    out = []
    for chosen in itertools.product(*lists.values()):
        values = dict(zip(lists, chosen))
        replaced = [f"{a.partition('=')[0]}={values[a.partition('=')[0]]}"
                    if a.partition("=")[0] in values else a for a in args]
        out.append(Combination(values, replaced))
    return out
