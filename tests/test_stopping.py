"""Stop signals (ldmcore/stopping.py): the first signal is a request the diffusion loop honours
after its step (tests/test_faults.py sends a real SIGTERM to a real run); during stage 1 it
stops at once and keeps the folder; a second signal is not deferred."""

from __future__ import annotations

import signal

import pytest

from ldmcore import train as train_module
from ldmcore.errors import Interrupted
from ldmcore.runfolder import MARKER
from ldmcore.stopping import StopSignals
from tests.reliability import run_cli


def test_the_first_signal_is_recorded_and_the_handler_restored_after():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals(["SIGUSR1"]) as stop:
        stop.deferring = True
        signal.raise_signal(signal.SIGUSR1)
        assert stop.received is signal.SIGUSR1
        err = stop.stopped("after step 3")
    assert signal.getsignal(signal.SIGUSR1) is before
    assert str(err) == "stopped by SIGUSR1 after step 3." and err.exit_code == 128 + signal.SIGUSR1


def test_a_second_signal_goes_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with StopSignals(["SIGUSR2"]) as stop:
            stop.deferring = True
            signal.raise_signal(signal.SIGUSR2)
            assert seen == []
            signal.raise_signal(signal.SIGUSR2)
            assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_outside_the_diffusion_loop_a_signal_stops_at_once():
    with pytest.raises(Interrupted, match="stopped by SIGUSR1 before the first diffusion step"):
        with StopSignals(["SIGUSR1"]):
            signal.raise_signal(signal.SIGUSR1)


def test_a_signal_during_stage_1_keeps_the_run_folder_to_resume(tmp_path, monkeypatch):
    def interrupted_stage_1(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train_module, "train_autoencoder", interrupted_stage_1)
    run = tmp_path / "run"
    out = run_cli("train", "experiment=smoke", f"run_dir={run}")
    assert out.escaped is None and out.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM before the first diffusion step" in out.paragraph and "resume=auto" in out.paragraph
    assert (run / MARKER).is_file() and not (run / "checkpoints" / "last.safetensors").exists()
