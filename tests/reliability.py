"""What the reliability tests (test_bad_input, test_faults, test_fuzz) and
``python -m benchmarks.reliability`` share: running a command and judging its outcome, photographing
a folder tree to prove a refused command changed nothing, and training with SIGKILLs.

A command's outcome is *clean* when no exception escaped ``ldm``'s ``main`` (a traceback is a
bug), the exit status is 0, or 2 with one paragraph on stderr that starts with ``ldm VERB:``.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldmcore import checkpoint, cli

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class Outcome:
    """What a user sees of one command: exit status, stderr, and any escaped exception."""

    argv: list[str]
    code: int | None
    stderr: str
    escaped: str | None = None  # the traceback, when an exception left main()

    @property
    def paragraph(self) -> str:
        return " ".join(self.stderr.split())

    @property
    def clean(self) -> bool:
        if self.escaped is not None or self.code not in (0, 2):
            return False
        if self.code == 0:
            return True
        text = self.stderr.strip()
        return (bool(text) and "\n\n" not in text and "Traceback" not in text
                and text.startswith(f"ldm {self.argv[0]}:"))


def run_cli(*argv: str) -> Outcome:
    """``ldm ARGV`` in this process (seconds cheaper than a child process per case)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(argv))
        except BaseException:  # noqa: BLE001 - any escape is what is being measured
            return Outcome(list(argv), None, err.getvalue(), traceback.format_exc())
    return Outcome(list(argv), code, err.getvalue())


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (folders too)."""
    if not root.exists():
        return {}
    found = {".": (0, 0)}
    for path in root.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return found


def ldm_process(*args: str, stderr=subprocess.DEVNULL, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ldmcore.cli", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=stderr, **kw)


def temp_files(run: Path) -> list[Path]:
    return sorted(run.rglob(".*.tmp"))


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.002) -> bool:
    """Poll ``predicate`` until true; False if ``proc`` ended (or time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


@dataclass
class KillReport:
    kills: int = 0
    during_write: int = 0  # a checkpoint temp file existed when the process died
    finished_early: int = 0  # the process ended before its kill came
    events: list[str] = field(default_factory=list)


def train_with_kills(run: Path, overrides: list[str], kills: int, seed: int) -> KillReport:
    """Train ``run`` as ``overrides`` say, SIGKILLing the process ``kills`` times and resuming
    each time, then once more to the end. Even kills come the moment a checkpoint temp file
    appears (mid-write), odd ones a random 0-1 s after the process starts training."""
    rng = random.Random(seed)
    report = KillReport()
    metrics = run / "metrics.jsonl"
    for i in range(kills):
        resume = ["resume=auto"]  # a kill before the first checkpoint leaves nothing to resume
        proc = ldm_process("train", *overrides, *resume)
        if i % 2 == 0:
            hit = wait_for(lambda: bool(list((run / "checkpoints").glob(".*.tmp"))), proc)
        else:
            start = metrics.stat().st_size if metrics.exists() else 0
            hit = wait_for(lambda: metrics.exists() and metrics.stat().st_size > start, proc)
            time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        if not hit or code != -signal.SIGKILL:
            report.finished_early += 1
            report.events.append(f"kill {i}: the process ended first (status {code})")
            continue
        report.kills += 1
        torn = bool(temp_files(run))
        report.during_write += torn
        report.events.append(f"kill {i}: {'during a checkpoint write' if torn else 'between writes'}")
    final = ldm_process("train", *overrides, "resume=auto", stderr=subprocess.PIPE, text=True)
    _, err = final.communicate(timeout=600)
    if final.returncode != 0:
        raise AssertionError(f"the final resume failed ({final.returncode}): {err}")
    return report


def same_weights(a: Path, b: Path) -> list[str]:
    """Names of the tensors that differ between two checkpoints (empty: bit-identical)."""
    ta, _ = checkpoint.load(a)
    tb, _ = checkpoint.load(b)
    if set(ta) != set(tb):
        return sorted(set(ta) ^ set(tb))
    return [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A ~100-byte PNG whose header declares side x side grey pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1), 9)) + chunk(b"IEND", b""))
    return path


def rewrite_checkpoint(path: Path, change_tensors=None, change_meta=None) -> None:
    """Rewrite a checkpoint with its tensors and/or metadata changed (for broken-file tests)."""
    tensors, meta = checkpoint.load(path)
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    checkpoint.save(path, tensors, meta)
