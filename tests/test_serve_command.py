"""``ldm serve``'s own words: each mistake is one paragraph and exit status 2, found before the
model is loaded where it can be."""

from __future__ import annotations

import socket
import sys

import pytest

from ldmcore.cli import main

pytest.importorskip("uvicorn", reason="ldm serve needs its extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="ldm serve needs its extra: pip install -e '.[serve]'")

from ldmcore.serve.command import _loopback  # noqa: E402


@pytest.mark.parametrize("args, words", [
    ([], "needs run=RUN_DIR"),
    (["run=x", "port=http"], "'port': Input should be a valid integer"),
    (["run=x", "port=70000"], "less than or equal to 65535"),
    (["run=x", "max_images=0"], "'max_images': Input should be greater than or equal to 1"),
    (["run=x", "ema=maybe"], "'ema': Input should be a valid boolean"),
    (["run=x", "colour=red"], "unexpected argument 'colour=red'"),
    (["run=x", "host=no.such.host.invalid"], "not an address of this machine"),
])
def test_mistakes_are_named(args, words, capsys) -> None:
    assert main(["serve", *args]) == 2
    assert words in capsys.readouterr().err.replace("\n", " ")


def test_a_taken_port_is_named_before_the_model_loads(capsys, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", f"run={tmp_path / 'no_run'}", f"port={port}"]) == 2
    assert "another program uses that port" in capsys.readouterr().err.replace("\n", " ")


def test_a_missing_run_is_named(capsys, tmp_path) -> None:
    assert main(["serve", f"run={tmp_path / 'no_run'}", "port=0"]) == 2
    assert "no_run" in capsys.readouterr().err


def test_without_the_serve_extra_it_says_what_to_install(monkeypatch, capsys) -> None:
    for name in [m for m in sys.modules if m.startswith("ldmcore.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    assert main(["serve", "run=x"]) == 2
    assert "pip install 'ldmcore[serve]'" in capsys.readouterr().err.replace("\n", " ")


def test_only_loopback_addresses_count_as_this_machine_alone() -> None:
    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1") and _loopback("127.0.0.2")
    assert not any(_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.org"))
