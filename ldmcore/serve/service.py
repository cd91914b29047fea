"""The loaded run behind the page: its description, checked requests, and the queue.

A request is checked completely when it arrives (the command line's own checks, per plugin, so
each message shows beside its input) and only then queued; a failure leaves nothing behind. Each
result is an ``ldm sample`` output folder, ``RUN/samples/serve/NNNN/`` (``0000.png``...,
``grid.png``, ``samples.json``, and ``inputs/`` with the files the page sent), and its command.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from ldmcore.diffusion.sigmas import SigmaKind
from ldmcore.errors import ConfigError, LdmError
from ldmcore.registry import default_registry
from ldmcore.sample import (LoadedRun, PreparedRequest, SampleRequest, condition_rows, generate,
                            parse_request, parse_values, prepare_request, sampler_steps,
                            write_samples)
from ldmcore.serve.jobs import Job, JobQueue
from ldmcore.serve.web_request import WebRequest, sample_words, shown_command


class RequestError(LdmError):
    """A request the server refuses; ``fields`` maps a plugin to the message for its input."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class FieldFailure(LdmError):
    """Sampling failed on one plugin's value (a check its network makes)."""

    def __init__(self, message: str, plugin: str) -> None:
        super().__init__(message)
        self.plugin = plugin


class SamplingService:
    """One loaded run serving many pages: checks requests, queues them, describes the run."""

    def __init__(self, loaded: LoadedRun, root: Path, max_images: int, queue_size: int,
                 settings: list[str]) -> None:
        self.loaded, self.root, self.max_images = loaded, root, max_images
        self.settings = settings  # the server's own words (precision, threads), for the command
        self.encoders = loaded.model.conditioner.encoders
        self.widgets = {name: enc.widget() for name, enc in self.encoders.items()}
        self.queue = JobQueue(queue_size)
        self._lock = threading.Lock()
        taken = [int(p.name) for p in root.glob("[0-9]*") if p.name.isdigit()] if root.is_dir() else []
        self._next = max(taken, default=0) + 1

    def describe(self) -> dict[str, Any]:
        """What the page draws: each plugin's input, the run's sampler settings, the limits."""
        plan = self.loaded.model.sampling
        size = self.loaded.cfg.data.image_size
        plugins = []
        for name, widget in self.widgets.items():
            shown = None if widget is None else dataclasses.asdict(widget)
            if shown is not None:
                shown["kind"] = widget.kind.value
            plugins.append({"name": name, "widget": shown,
                            "guidance": plan.guidance.per_plugin.get(name),
                            "guided": self.encoders[name].guided})  # False: no scale of its own
        registry = self.loaded.registry or default_registry()
        return {"run": str(self.loaded.run), "image_size": [size, size],
                "plugins": plugins, "max_images": self.max_images,
                "sampler": {"name": plan.sampler.name, "steps": plan.steps,
                            "sigmas": plan.sigmas.kind.value, "guidance": plan.guidance.scale},
                "samplers": sorted(registry.samplers),
                "sigmas": [k.value for k in SigmaKind]}

    def submit(self, web: WebRequest) -> dict[str, Any]:
        """Check ``web`` and queue it; returns the job's view. Raises ``RequestError``."""
        if web.n > self.max_images:
            raise RequestError(f"n={web.n}: this server makes at most {self.max_images} images "
                               f"a request (ldm serve max_images=N sets it).")
        with self._lock:
            job_id, self._next = f"{self._next:04d}", self._next + 1
        folder = self.root / job_id
        try:
            req, prepared, words = self._checked(web, folder)
            job = Job(job_id, folder, shown_command(words, self.settings),
                      work=lambda job: self._sample(job, req, prepared))
            self.queue.submit(job)
        except LdmError as err:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(err, RequestError):
                raise
            raise RequestError(str(err)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        view = self.queue.view(job_id)
        assert view is not None
        return view

    def _checked(self, web: WebRequest, folder: Path) -> tuple[SampleRequest, PreparedRequest, list[str]]:
        words, fields = sample_words(web, self.loaded.run, self.widgets, folder / "inputs")
        if fields:
            raise RequestError(_summary(fields), fields)
        req = parse_request(words)
        try:
            rows = condition_rows(self.loaded.model, req.cond)
        except ConfigError as err:
            raise RequestError(str(err), _owner(str(err), self.encoders)) from None
        for name, encoder in self.encoders.items():
            try:
                parse_values({name: encoder}, [{name: row[name]} for row in rows])
            except LdmError as err:
                fields[name] = str(err)
        if fields:
            raise RequestError(_summary(fields), fields)
        if len(rows) * req.n > self.max_images:
            raise RequestError(f"{len(rows)} condition rows x n={req.n} makes {len(rows) * req.n} "
                               f"images; this server makes at most {self.max_images} a request.")
        return req, prepare_request(self.loaded, req), words

    def _sample(self, job: Job, req: SampleRequest, prepared: PreparedRequest) -> list[str]:
        total, done = sampler_steps(self.loaded, req, prepared), 0

        def progress(_step: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            job.progress = min(1.0, done / max(1, total))

        try:
            images = generate(self.loaded, req, prepared, progress)
            return [r["file"] for r in write_samples(job.folder, req, self.loaded, prepared, images)]
        except LdmError as err:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise FieldFailure(str(err), self._failing(prepared)) from None
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise

    def _failing(self, prepared: PreparedRequest) -> str:
        """The plugin whose network refuses its value (what a sampling error was about)."""
        for name, encoder in self.encoders.items():
            try:
                with torch.no_grad():
                    encoder(encoder.collate([prepared.values[0][name]]))
            except LdmError:
                return name
            except Exception:  # noqa: BLE001 - only finding whose value it was
                continue
        return ""


def _summary(fields: dict[str, str]) -> str:
    return " ".join(fields.values())


def _owner(message: str, encoders: dict[str, Any]) -> dict[str, str]:
    """The plugin a command-line message is about (it starts ``cond.NAME``), as a field."""
    for name in encoders:
        if message.startswith(f"cond.{name}"):
            return {name: message}
    return {}

