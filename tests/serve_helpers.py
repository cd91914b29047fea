"""Helpers of the ``ldm serve`` tests: a server process over a run, a headless Chromium, and
the ``ldm sample`` command a page shows, run for real to compare pixels."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldmcore.cli import main

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    run: Path
    cwd: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=60) as response:
            return response.read()

    def alive(self) -> bool:
        return self.process.poll() is None


def start_server(run: Path, cwd: Path, *extra: str) -> Server:
    """``ldm serve`` on a free port (port=0), fp32 on one thread, as a separate process; waits
    for the line that says where it listens."""
    cwd.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "ldmcore.cli", "serve", f"run={run}", "port=0", "precision=fp32",
         "threads=1", *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        if " at http://" in line:
            url = line.split(" at ", 1)[1].split()[0]
            return Server(process, url, run, cwd)
    process.wait(timeout=30)
    raise AssertionError(f"ldm serve did not start: {process.stderr.read()}")


def stop_server(server: Server) -> str:
    """Stop the server with Ctrl-C (SIGINT), as a person would; returns its error output."""
    server.process.send_signal(2)
    try:
        _, err = server.process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        _, err = server.process.communicate()
    return err


def serving(run: Path, root: Path) -> Iterator[Server]:
    """A server over a copy of ``run`` (in ``root``) until the generator is closed."""
    server = start_server(copy_run(run, root / "run"), root / "cwd")
    yield server
    log = stop_server(server)  # Ctrl-C stops it cleanly, and nothing it served was a bug
    assert server.process.returncode == 0 and "Traceback" not in log, log


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a trained run (the server writes its results into the run folder)."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("samples"))
    return to


def chromium():
    """A headless Chromium driven by Debian's chromedriver, or a skip that says how to get it."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install chromium chromium-driver "
                    f"(make setup does as root) to run the browser tests of ldm serve")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def command_words(command: str) -> list[str]:
    """The words after ``ldm sample`` of a command the page shows."""
    words = shlex.split(command)
    assert words[:2] == ["ldm", "sample"], command
    return words[2:]


def run_command(command: str, out: Path) -> Path:
    """Run the page's command with ``ldm sample`` itself (the CLI entry point)."""
    assert main(["sample", *command_words(command), f"out={out}"]) == 0
    return out


def pixels(data: bytes | Path) -> np.ndarray:
    image = Image.open(data if isinstance(data, Path) else io.BytesIO(data))
    return np.asarray(image)


def assert_same_images(server: Server, job: dict, out: Path) -> None:
    """Every image the server made equals, pixel for pixel, the one ``ldm sample`` made from the
    shown command; and both record the same values and seeds."""
    assert job["files"], job
    for name in job["files"]:
        served = pixels(server.get(f"/api/jobs/{job['id']}/{name}"))
        assert np.array_equal(served, pixels(out / name)), name
    served_record = json.loads(server.get(f"/api/jobs/{job['id']}/samples.json"))
    assert served_record["samples"] == json.loads((out / "samples.json").read_text())["samples"]
