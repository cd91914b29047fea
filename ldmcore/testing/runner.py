"""Running the rules on a case: ``check_rule``, ``check_plugin`` and the pytest mixin
``ConformanceTests`` (one test per rule)."""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from ldmcore.testing.case import Broken, ConformanceError, PluginCase
from ldmcore.testing.context import Context
from ldmcore.testing.rules import RULES


def _run(case: PluginCase, rules: Sequence[str]) -> Iterator[tuple[str, str]]:
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown conformance rules {unknown}; the rules are {list(RULES)}")
    with tempfile.TemporaryDirectory(prefix="ldm-conformance-") as tmp:
        for rule in rules:
            rng = torch.get_rng_state()
            try:
                RULES[rule](Context(case, Path(tmp)))
            except Broken as why:
                yield rule, str(why)
            except NotImplementedError as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1].name
                yield rule, f"{where}() is not implemented."
            except Exception as exc:  # a plugin's bug inside a rule is that rule's failure
                where = traceback.extract_tb(exc.__traceback__)[-1]
                yield rule, (f"{type(exc).__name__}: {exc} (in {where.name}, "
                             f"{Path(where.filename).name}:{where.lineno})")
            finally:
                torch.set_rng_state(rng)


def check_rule(case: PluginCase, rule: str) -> None:
    """Check one rule; raises ``ConformanceError`` naming it when the plugin breaks it."""
    failures = dict(_run(case, [rule]))
    if failures:
        raise ConformanceError(case.name, failures)


def check_plugin(case: PluginCase, rules: Sequence[str] | None = None) -> None:
    """Check every rule (or those named); raises one ``ConformanceError`` listing each failure."""
    failures = dict(_run(case, list(rules or RULES)))
    if failures:
        raise ConformanceError(case.name, failures)


class ConformanceTests:
    """Mixin: subclass it in a plugin's tests as ``class TestMine(ConformanceTests)`` and set
    ``case``; pytest then runs one test per rule (``test_rule_<name>``)."""

    case: ClassVar[PluginCase]


def _make_test(rule: str) -> Callable[[ConformanceTests], None]:
    def test(self: ConformanceTests) -> None:
        check_rule(self.case, rule)

    test.__name__ = test.__qualname__ = f"test_rule_{rule.replace('-', '_')}"
    test.__doc__ = f"Conformance rule {rule!r} (docs/conformance.md)."
    return test


for _rule in RULES:
    setattr(ConformanceTests, f"test_rule_{_rule.replace('-', '_')}", _make_test(_rule))
del _rule
