"""The run folder: everything a run needs and makes, in one place, and how a run is read back.

::

    RUN_DIR/config.yaml                  the resolved, validated config (a readable copy)
    RUN_DIR/checkpoints/autoencoder.safetensors   stage 1 (first-stage autoencoder)
    RUN_DIR/checkpoints/last.safetensors          stage 2, latest (resume and sampling read it)
    RUN_DIR/checkpoints/step_N.safetensors        periodic copies
    RUN_DIR/samples/step_N.png           sample grids during training
    RUN_DIR/metrics.jsonl                one JSON object per logged step
    RUN_DIR/.ldmcore-run                 the marker: ldmcore made this folder and may replace it
    RUN_DIR/.lock                        held (flock) by the process training in it; holds its PID

ldmcore owns the folders it made and only those: ``overwrite=true`` replaces a folder that
carries the marker and refuses any other (a run of ours with no diffusion checkpoint yet, left
by a start that failed or was killed, is replaced without it; ``resume=true`` there stops and
says so, ``resume=auto`` starts afresh); a second training process on a locked folder is
refused with the PID of the first; an error before a new run's first checkpoint removes the
folder it made, and an error while replacing a run puts the old one back.

A run's config has one source: the metadata of ``checkpoints/last.safetensors``
(``run_metadata`` writes it, ``run_config`` and ``load_run`` read it); ``config.yaml`` is for
people to read. The commands (``train``, ``sample``, ``eval``, ``import``, ``export``) sit
above this module and go through it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from ldmcore import checkpoint
from ldmcore.build import build_model
from ldmcore.config import ExperimentConfig, validate
from ldmcore.errors import ConfigError, Interrupted, LdmError, first_few
from ldmcore.model import LatentDiffusion
from ldmcore.registry import Registry, default_registry

FORMAT = "ldmcore/run/1"  # the metadata's "format": the layout of a run's checkpoint
MARKER = ".ldmcore-run"
SAMPLES_MARKER = ".ldmcore-samples"  # in an ``ldm sample out=`` folder that ldm sample made
LOCK = ".lock"
REPLACED = ".replaced"  # suffix of a run moved aside by overwrite=true until the new one is safe


class Start(enum.Enum):
    """How a training command starts in its run folder (``RunFolder.check_claim``)."""

    NEW = "new"            # the folder is empty or does not exist
    CONTINUE = "continue"  # resume from checkpoints/last.safetensors
    REPLACE = "replace"    # a run of ours is set aside and put back if the new one fails early


class RunFolder:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def autoencoder(self) -> Path:
        return self.checkpoints / "autoencoder.safetensors"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}.safetensors"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def check_claim(self, *, resume: bool | str, overwrite: bool, what: str = "run_dir") -> Start:
        """How this command may start here, decided before anything is touched (``what`` names
        the argument that gave the folder). ``resume`` is true, false or ``"auto"`` (continue
        when there is a checkpoint, else start afresh; a finished stage 1 counts); a run of ours
        that stopped before its first diffusion checkpoint has nothing to lose, so starting it
        again replaces it unasked."""
        if not _is_nonempty_dir(self.root):
            if resume is True:
                raise ConfigError(f"resume=true but {str(self.root)!r} holds no run to resume; "
                                  f"drop resume=true to start one, or write `resume=auto` to "
                                  f"continue a run when there is one and start it when not.")
            if self.root.exists() and not self.root.is_dir():
                raise ConfigError(f"{what} {str(self.root)!r} is a file, not a folder; choose "
                                  f"another {what}" + (" or name=OTHER." if what == "run_dir" else "."))
            return Start.NEW
        if not self.marker.is_file():
            raise ConfigError(f"{what} {str(self.root)!r} is not a run folder made by "
                              f"ldmcore (it has no {MARKER} marker) and holds "
                              f"{_contents(self.root)}; ldmcore neither resumes in nor "
                              f"replaces a folder it did not make. Choose another {what} "
                              f"(a run made by an older ldmcore: create the empty file "
                              f"{str(self.marker)!r} first).")
        holder = RunLock.holder(self.root)
        if holder is not None:  # a run in progress: whatever else holds, it is not ours to take
            raise _in_use(self.root, holder)
        checkpointed = self.last.is_file()
        resumable = checkpointed or self.autoencoder.is_file()  # a finished stage 1 is kept
        if resume is True and not resumable:
            raise ConfigError(f"resume=true but {str(self.root)!r} holds no checkpoint to "
                              f"continue from (no {str(self.last)!r}: the run stopped before "
                              f"its first one). Drop resume=true to start it again in the same "
                              f"folder, or write `resume=auto` to continue when there is a "
                              f"checkpoint and start afresh when there is none.")
        if resume is True or (resume == "auto" and resumable):
            return Start.CONTINUE
        if overwrite or not checkpointed:
            return Start.REPLACE
        raise ConfigError(f"run folder {str(self.root)!r} already holds a run (checkpoint "
                          f"{str(self.last)!r}); pass `resume=true` to continue it, "
                          f"`overwrite=true` to start afresh, or name=OTHER for a new folder.")

    @contextlib.contextmanager
    def claimed(self, config: dict[str, Any], *, resume: bool | str, overwrite: bool,
                main: bool = True) -> Iterator[RunFolder]:
        """Make (or take over) the folder, hold its lock, and write ``config.yaml``.

        A new folder that the block leaves by an error (not an interrupt) before the first
        diffusion checkpoint is removed again; a run replaced by ``overwrite=true`` waits
        beside it (``.NAME.replaced``) and comes back in that case, and is removed otherwise. Checkpoint temp files orphaned by a killed
        process are removed once the lock is held. Other ranks (``main=False``) only wait.
        """
        if not main:
            yield self
            return
        start = self.check_claim(resume=resume, overwrite=overwrite)
        existed = _is_nonempty_dir(self.root)
        made = _first_missing(self.root)
        aside = self.root.with_name(f".{self.root.name}{REPLACED}")
        lock = None
        try:
            if existed:
                lock = RunLock(self.root)
                if start is Start.REPLACE:
                    _remove_owned(aside)  # left by a process killed while replacing
                    os.replace(self.root, aside)
                    lock.release()
                    lock = None
                    existed = False
            _make_dirs(self.root, ())
            self.mark()  # first: a kill from here on leaves a folder ldmcore knows as its own
            _make_dirs(self.checkpoints, (self.samples,))
            lock = lock or RunLock(self.root)
            self.remove_temp_files()
            self.config.write_text(yaml.safe_dump(config, sort_keys=False))
            yield self
        except BaseException as exc:
            if lock is not None:
                lock.release()
                lock = None
            failed = isinstance(exc, Exception) and not isinstance(exc, Interrupted)
            if not existed and failed and not self.last.exists():
                _remove_owned(self.root)
                _remove_empty(self.root, made)
                if aside.exists():
                    os.replace(aside, self.root)
            raise
        finally:
            if lock is not None:
                lock.release()
            _remove_owned(aside)  # the replaced run, unless it was just put back

    def mark(self) -> None:
        """Write the marker that makes the folder ldmcore's own (``overwrite`` may replace it)."""
        self.marker.write_text(json.dumps({"made_by": "ldmcore"}) + "\n")

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files of checkpoint writes a killed process left behind."""
        orphans = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for p in orphans:
            p.unlink()
        return orphans

    def prune(self, keep: int) -> None:
        """Keep the newest ``keep`` periodic checkpoints."""
        periodic = sorted(self.checkpoints.glob("step_*.safetensors"),
                          key=lambda p: int(p.stem.split("_")[1]))
        for old in periodic[: max(0, len(periodic) - keep)]:
            old.unlink()


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write samples into a file, or into a non-empty folder that neither ``ldm
    sample`` made nor lies inside a run folder (unless ``overwrite``): a user's own
    ``0000.png`` is never replaced unasked."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; name a folder for the samples.")
    ours = (out / SAMPLES_MARKER).is_file() or any((p / MARKER).is_file() for p in out.parents)
    if _is_nonempty_dir(out) and not ours and not overwrite:
        raise ConfigError(f"out={str(out)!r} already holds {_contents(out)} and was not made by "
                          f"ldm sample; name a new or empty folder, or pass overwrite=true to "
                          f"write 0000.png..., grid.png and samples.json into it.")


def make_output_folder(out: Path) -> None:
    """Create ``out`` (with its marker) just before the samples are written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / SAMPLES_MARKER).touch()
    except OSError as exc:
        raise ConfigError(f"cannot create out={str(out)!r}: {exc.strerror or exc}; name a "
                          f"writable folder.") from None


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as a process trains there.

    The kernel drops the lock when the process dies, however it dies, so a killed run never
    leaves a stale lock; the file keeps the holder's PID for the message a second writer gets.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK
        self.handle: IO[str] | None = open(self.path, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            self.handle = None
            raise _in_use(root, holder) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    @staticmethod
    def holder(root: Path) -> str | None:
        """The PID written in ``root``'s lock while a process holds it, else None (the file is
        probed, never created)."""
        path = root / LOCK
        if not path.is_file():
            return None
        with open(path) as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "unknown"
        return None  # closing the handle dropped the probe's shared lock

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor drops the flock
            self.handle = None


def _in_use(root: Path, holder: str) -> LdmError:
    return LdmError(f"run folder {str(root)!r} is in use: process {holder} is training in it (it "
                    f"holds {str(root / LOCK)!r}). Two writers would interleave its checkpoints "
                    f"and metrics; wait for that process to end or stop it, or train in another "
                    f"run_dir.")


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _contents(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return first_few([repr(n) for n in names], 4)


def _make_dirs(root: Path, inside: tuple[Path, ...]) -> None:
    try:
        for d in (root, *inside):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {str(root)!r}: {exc.strerror or exc}; "
                          f"choose a writable run_dir (or name=OTHER under runs/).") from None


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what mkdir -p would create)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty(path: Path, top: Path | None) -> None:
    """Remove the now-empty folders from ``path`` up to ``top`` that this command created."""
    if top is None:
        return
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            p.rmdir()
        if p == top:
            return


def _remove_owned(folder: Path) -> None:
    """Remove ``folder`` if ldmcore made it (it carries the marker); anything else stays."""
    if (folder / MARKER).is_file():
        shutil.rmtree(folder, ignore_errors=True)


class MetricsLog:
    """Appends one JSON line per record, flushed at once (a killed run keeps its metrics), and
    hands each record to ``listener`` (the run's loggers, ``ldmcore.loggers.run_loggers``)."""

    def __init__(self, path: Path, listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.listener = listener

    def write(self, **record: Any) -> None:
        record.setdefault("time_s", round(time.perf_counter() - self.start, 3))
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.listener is not None:
            self.listener(record)


def plugin_versions(model: LatentDiffusion, registry: Registry) -> dict[str, dict[str, str]]:
    """Package, version and module of each of ``model``'s condition plugins (by instance name)."""
    info = {i.name: i for i in registry.infos()}
    found = {n: info.get(type(enc).name) for n, enc in model.conditioner.encoders.items()}
    return {n: {"package": i.package, "version": i.version, "module": i.module}
            for n, i in found.items() if i is not None}


def run_metadata(cfg: ExperimentConfig, model: LatentDiffusion, step: int,
                 registry: Registry | None = None, **extra: Any) -> dict[str, Any]:
    """The metadata of a run's diffusion checkpoint: format, step, the resolved config (the
    single source of a run's config), plugin versions, and ``extra`` entries."""
    return {"format": FORMAT, "kind": "latent_diffusion", "step": step,
            "config": cfg.model_dump(mode="json"),
            "plugins": plugin_versions(model, registry or default_registry()), **extra}


def _checked_meta(run: RunFolder, meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("kind") != "latent_diffusion" or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"{str(run.last)!r} is not an ldmcore diffusion checkpoint (its "
                          f"metadata has no config); was it written by `ldm train`?")
    return meta


def _existing(run_dir: Path) -> RunFolder:
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"run={str(run_dir)!r} is not a folder; name a run folder made by "
                          f"`ldm train` (e.g. run=runs/demo).")
    return run


def run_config(run_dir: Path) -> ExperimentConfig:
    """A run's validated config, read from its last checkpoint's metadata (no tensors read)."""
    run = _existing(run_dir)
    return validate(_checked_meta(run, checkpoint.metadata(run.last))["config"])


def load_run(run_dir: Path, registry: Registry | None = None, use_ema: bool = True,
             conditions: dict[str, str] | None = None
             ) -> tuple[ExperimentConfig, LatentDiffusion, dict[str, Any]]:
    """Rebuild the model of a run folder from its last checkpoint (config from its metadata);
    the model samples with the run's own sampler settings by default.

    ``conditions`` (``"text.model" -> value``) replaces values of the run's plugin configs; a
    path given that way is the user's, so it may lie outside the run folder (``local_path``).
    """
    run = _existing(run_dir)
    tensors, meta = checkpoint.load(run.last)
    _checked_meta(run, meta)
    checkpoint.require_finite(tensors, run.last)
    cfg = validate(_with_condition_values(meta["config"], conditions or {}))
    model = build_model(cfg, registry=registry, root=run.root,
                        trusted_paths=frozenset((conditions or {}).values()))
    checkpoint.load_model_state(model, tensors, run.last)
    if use_ema:
        own = model.state_dict()
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("ema."):
                    own[key[4:]].copy_(value)
    model.eval()
    return cfg, model, meta


def _with_condition_values(config: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The run's config with ``conditions.NAME.KEY=VALUE`` replacements (NAME must be enabled)."""
    sections = {name: dict(section or {}) for name, section in config.get("conditions", {}).items()}
    for dotted, value in values.items():
        name, _, key = dotted.partition(".")
        if name not in sections or not key:
            raise ConfigError(f"conditions.{dotted}: write conditions.PLUGIN.KEY=VALUE for a "
                              f"plugin of this run ({', '.join(sections) or 'none'}).")
        sections[name][key] = value
    return {**config, "conditions": sections}
