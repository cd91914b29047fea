"""The queue: one worker thread samples one job at a time, however many pages wait.

Two samplings at once would only share the same cores and both finish later; one at a time, in
order, gives each page a place in the line and a progress figure. The waiting room is bounded:
a request beyond it is refused at once, with the reason, rather than left hanging.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmcore.errors import LdmError

KEPT = 200  # finished jobs whose state the server remembers (their folders stay on disk)


class QueueFull(LdmError):
    """More requests wait than the queue holds."""


@dataclass
class Job:
    """One request on its way: checked, waiting, sampling, done or failed."""

    id: str
    folder: Path
    command: str
    work: Callable[[Job], list[str]]
    state: str = "queued"
    progress: float = 0.0
    error: str | None = None
    plugin: str = ""  # the plugin whose value the error is about, if one is
    files: list[str] = field(default_factory=list)

    def view(self, ahead: int) -> dict[str, Any]:
        """The job as the page reads it."""
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 4),
                "ahead": ahead, "error": self.error, "plugin": self.plugin, "command": self.command,
                "files": self.files, "grid": "grid.png" if self.state == "done" else None}


class JobQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="ldm-serve-sampler", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            waiting = sum(j.state == "queued" for j in self._jobs.values())
            if waiting >= self.capacity:
                raise QueueFull(f"{waiting} requests are already waiting (the queue holds "
                                f"{self.capacity}); try again when one has finished.")
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed")]
            for key in finished[:max(0, len(finished) - KEPT)]:
                del self._jobs[key]
        self._waiting.put(job)

    def view(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            ahead = 0
            if job.state == "queued":
                order = list(self._jobs.values())
                ahead = sum(j.state in ("queued", "running") for j in order[:order.index(job)])
            return job.view(ahead)

    def close(self) -> None:
        self._waiting.put(None)
        self._worker.join(timeout=60)

    def _run(self) -> None:
        while (job := self._waiting.get()) is not None:
            job.state = "running"
            try:
                job.files = job.work(job)
                job.progress, job.state = 1.0, "done"
            except LdmError as err:
                job.error, job.plugin, job.state = str(err), getattr(err, "plugin", ""), "failed"
            except Exception as exc:  # a bug: say so, keep serving, leave the traceback in the log
                traceback.print_exc()
                job.error = (f"internal error ({type(exc).__name__}: {exc}); the server keeps "
                             f"running, and its log has the traceback.")
                job.state = "failed"
