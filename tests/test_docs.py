"""Meta-tests, as datasette has: every hook is documented (with an example that runs) and tested,
every conformance rule is documented, and the docs' links lead somewhere."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ldmcore import hookspecs
from ldmcore.registry import hook_names
from ldmcore.testing import RULES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS_MD = DOCS / "hooks.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def sections(path: Path, level: str) -> dict[str, str]:
    """Heading text -> the text under it, for headings of exactly ``level`` (e.g. "##")."""
    parts = re.split(rf"^{level} (.+)$", path.read_text(), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_reference_section_with_an_example(hook):
    docs = sections(HOOKS_MD, "##")
    assert hook in docs, f"docs/hooks.md has no '## {hook}' section"
    assert BLOCK.search(docs[hook]), f"the {hook} section of docs/hooks.md has no Python example"
    assert f"register_{hook.removeprefix('register_')}" in docs[hook]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_docstring_saying_when_it_is_called(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "When:" in doc, f"hookspecs.{hook} needs a docstring saying when it is called"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook):
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    assert any(hook in p.read_text() for p in tests), f"no test in tests/ exercises {hook}"


def test_the_hook_examples_run():
    """The Python blocks of docs/hooks.md, in order, in one namespace (as a reader runs them)."""
    namespace: dict = {"__name__": "docs_hooks"}
    for block in BLOCK.findall(HOOKS_MD.read_text()):
        exec(compile(block, str(HOOKS_MD), "exec"), namespace)  # noqa: S102 - our own docs


def test_no_section_documents_a_hook_that_does_not_exist():
    documented = {h for h in sections(HOOKS_MD, "##") if h.startswith("register_")}
    assert documented == set(hook_names())


@pytest.mark.parametrize("rule", list(RULES))
def test_every_conformance_rule_is_documented(rule):
    assert rule in sections(DOCS / "conformance.md", "###"), (
        f"docs/conformance.md has no '### {rule}' section")


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
