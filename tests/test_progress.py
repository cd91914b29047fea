"""Progress bars: drawn on a terminal, never into a pipe or a log (stderr not a TTY), and never
with ``progress=false``; the bar counts every sampler step of the request."""

from __future__ import annotations

import io
import sys

import pytest

from ldmcore import cli
from ldmcore.progress import progress_bar, shows_progress
from tests.test_sampling import run  # noqa: F401 - the module's run fixture


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def sample(capsys, run, tmp_path, *extra: str) -> str:  # noqa: F811
    args = ["sample", f"run={run}", "cond.class=[1,2]", "n=2", "steps=3", "batch=3",
            "precision=fp32", f"out={tmp_path}", *extra]
    assert cli.main(args) == 0
    return capsys.readouterr().err


def test_no_bar_when_stderr_is_not_a_terminal(capsys, run, tmp_path):  # noqa: F811
    assert not sys.stderr.isatty() and not shows_progress(True)
    assert sample(capsys, run, tmp_path) == ""  # progress=true is the default


def test_a_terminal_gets_a_bar_that_counts_every_step(capsys, run, tmp_path, monkeypatch):  # noqa: F811
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    sample(capsys, run, tmp_path / "a")
    drawn = terminal.getvalue()
    # 4 images in batches of 3: two model.sample calls of 3 steps each
    assert "sampling 4 images" in drawn and "6/6" in drawn


def test_progress_false_turns_it_off_on_a_terminal(capsys, run, tmp_path, monkeypatch):  # noqa: F811
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    sample(capsys, run, tmp_path / "b", "progress=false")
    assert terminal.getvalue() == ""


@pytest.mark.parametrize("wanted, tty, shown", [(True, True, True), (True, False, False),
                                                 (False, True, False), (False, False, False)])
def test_shows_progress_only_when_asked_and_on_a_terminal(monkeypatch, wanted, tty, shown):
    monkeypatch.setattr(sys, "stderr", Terminal() if tty else io.StringIO())
    assert shows_progress(wanted) is shown
    bar = progress_bar(5, "x", wanted)
    bar.update(5)
    bar.close()
    assert (sys.stderr.getvalue() != "") is shown
