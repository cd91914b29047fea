"""Stopping a training run on a signal without losing what it learned.

A cluster scheduler sends SIGTERM some seconds before it kills a job; a user presses Ctrl-C
(SIGINT). While ``StopSignals`` is active, the first such signal only asks the run to stop: the
diffusion loop finishes its current step, writes ``last.safetensors`` and ends with a message
(exit status 128 + the signal's number, as a shell reports a process ended by it). During
stage 1, which writes no intermediate checkpoint, the run stops at once and keeps its folder, so
``resume=true`` starts stage 1 again. A second signal of the same kind is not deferred: the
signal's default action happens (for SIGINT a KeyboardInterrupt), for a user who means it.
Which signals stop a run this way is ``trainer.stop_signals`` (an empty list keeps Python's
default handling).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from ldmcore.errors import Interrupted


class StopSignals:
    """Context manager: handle ``names`` (e.g. ``("SIGINT", "SIGTERM")``) as stop requests."""

    def __init__(self, names: tuple[str, ...] | list[str]) -> None:
        self.signals = [signal.Signals[n] for n in names]
        self.received: signal.Signals | None = None
        self.deferring = False  # True inside the diffusion loop, which checkpoints before stopping
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live on main only
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received is not None:  # a second signal: no more waiting
            signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))  # type: ignore[arg-type]
            signal.raise_signal(sig)
            return
        self.received = sig
        if not self.deferring:
            raise self.stopped("before the first diffusion step (in stage 1, the autoencoder, or "
                               "while setting up), which keeps no intermediate checkpoint; the "
                               "same command starts the run again, and resume=auto also keeps a "
                               "finished stage 1")

    def stopped(self, what: str) -> Interrupted:
        """The error that ends the run, naming the signal and ``what`` was kept."""
        sig = self.received or signal.SIGINT
        err = Interrupted(f"stopped by {sig.name} {what}.")
        err.exit_code = 128 + int(sig)
        return err
