"""``ldm serve`` over HTTP, no browser: bad requests get a clear error and leave the server up
and the disk as it was; a good request gives the pixels of the command it shows."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="ldm serve needs its extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="ldm serve needs its extra: pip install -e '.[serve]'")

from ldmcore.sample import load_for_sampling  # noqa: E402
from ldmcore.serve.jobs import Job, JobQueue, QueueFull  # noqa: E402
from ldmcore.serve.service import RequestError, SamplingService  # noqa: E402
from ldmcore.serve.web_request import WebRequest  # noqa: E402
from tests.serve_helpers import assert_same_images, copy_run, pixels, run_command  # noqa: E402

pytestmark = pytest.mark.slow


def post(server, body) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + "api/sample", content=data, timeout=120,
                      headers={"Content-Type": "application/json"})


def finished(server, job: dict) -> dict:
    deadline = time.monotonic() + 240
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = httpx.get(f"{server.url}api/jobs/{job['id']}", timeout=30).json()
    return job


def files_of(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def refused(response: httpx.Response, status: int, *words: str, plugin: str | None = None) -> None:
    assert response.status_code == status, response.text
    answer = response.json()
    text = answer["fields"][plugin] if plugin else answer["error"]
    for word in words:
        assert word in text, (word, text)


def test_bad_requests_get_clear_errors_and_touch_nothing(class_server, tmp_path) -> None:
    server = class_server
    (server.cwd / "notes.png").write_bytes(b"the server's own file")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(outside)
    before_run, before_cwd = files_of(server.run), files_of(server.cwd)

    refused(post(server, b'{"cond": {"class": '), 400, "not JSON")
    refused(post(server, b"\xff\xfe not utf-8"), 400, "not JSON")
    refused(post(server, '{"cond": {"class": "3"}, "guidance": NaN}'), 400, "NaN")
    refused(post(server, [1, 2]), 422, "valid dictionary")
    refused(post(server, {"cond": {"class": "3"}, "n": 10**6}), 422, "n=1000000", "at most 16")
    refused(post(server, {"cond": {"class": "3"}, "n": 0}), 422, "'n'")
    refused(post(server, {"cond": {"class": "3"}, "out": "/tmp/x"}), 422, "unknown config key 'out'")
    refused(post(server, {"cond": {"class": "3"}, "sampler": "nope"}), 422, "nope", "ddim")
    refused(post(server, {"cond": {"class": "3"}, "steps": 0}), 422, "steps")
    refused(post(server, {"cond": {"klass": "3"}}), 422, "cond.klass names no condition",
            plugin="klass")
    refused(post(server, {"cond": {"class": "three"}}), 422, "not a class label", plugin="class")
    refused(post(server, {"files": {"class": {"image": {"png": "AAAA"}}}}), 422,
            "takes text, not a file", plugin="class")
    for path in (str(outside), "~/.bashrc", "../run/config.yaml", "notes.png", '["a", "/etc/passwd"]'):
        refused(post(server, {"cond": {"class": path}}), 422, "path on the server's disk",
                plugin="class")
    refused(post(server, b"x" * (50 * 2**20)), 413, "larger than")
    # a value the plugin's network refuses fails the job, not the server, and names the plugin
    job = finished(server, post(server, {"cond": {"class": "12"}, "n": 1}).json())
    assert job["state"] == "failed" and job["plugin"] == "class" and "out of range" in job["error"]
    for path in ("api/jobs/..%2F..%2Fconfig.yaml", "api/jobs/99999", "api/jobs/99999/grid.png"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404, path

    assert server.alive()
    assert files_of(server.run) == before_run and files_of(server.cwd) == before_cwd
    good = finished(server, post(server, {"cond": {"class": "[1, 4]"}, "n": 2, "seed": 7}).json())
    assert good["state"] == "done" and len(good["files"]) == 4  # two rows, as on the command line
    for name in ("..%2F..%2F..%2Fconfig.yaml", "inputs", "..", "0000.png%00.yaml"):
        path = f"api/jobs/{good['id']}/{name}"
        assert httpx.get(server.url + path, timeout=30).status_code == 404, path
    assert_same_images(server, good, run_command(good["command"], tmp_path / "cli"))


def test_file_inputs_are_checked_before_they_are_saved(shapes_server) -> None:
    server = shapes_server
    before = files_of(server.run)
    text = {"text": "a red circle", "layout": '[[0.1, 0.1, 0.6, 0.6, "circle"]]'}
    labels = np.zeros((16, 16), np.uint8)
    cases = [
        ({"image": {"png": png(labels[:8, :8])}}, "8x8", "16x16"),
        ({"image": {"png": png(np.zeros((16, 16, 3), np.uint8))}}, "RGB", "single-channel"),
        ({"image": {"png": png(labels + 9)}}, "class index 9", "background"),
        ({"image": {"png": "not base64!"}}, "not base64"),
        ({"image": {"png": base64.b64encode(b"GIF89a....").decode()}}, "not a readable image"),
        ({"image": {"pixels": [[0] * 16] * 15}}, "16x15"),
        ({"image": {"pixels": [[0] * 16, [0] * 3]}}, "equal length"),
        ({"image": {"pixels": [[2**70] * 16] * 16}}, "small integers"),
        ({"image": {"pixels": [[0] * 16] * 16}, "mask": {"pixels": [[0]]}}, "unknown mask"),
    ]
    for files, *words in cases:
        response = post(server, {"cond": text, "files": {"segmap": files}})
        refused(response, 422, *words, plugin="segmap")
    refused(post(server, {"cond": {**text, "segmap": "map.png"}}), 422, "is a file input",
            plugin="segmap")
    refused(post(server, {"cond": text}), 422, "give its label map", plugin="segmap")
    assert server.alive() and files_of(server.run) == before


def test_requests_wait_in_line_and_the_waiting_room_is_bounded(class_server) -> None:
    server = class_server
    jobs = [post(server, {"cond": {"class": str(c)}, "n": 8, "steps": 25}) for c in range(3)]
    views = [r.json() for r in jobs]
    assert [r.status_code for r in jobs] == [202] * 3
    states = [httpx.get(f"{server.url}api/jobs/{v['id']}", timeout=30).json() for v in views]
    running = [s for s in states if s["state"] == "running"]
    assert len(running) <= 1  # one sampling at a time
    assert states[-1]["state"] == "queued" and states[-1]["ahead"] >= 1
    done = [finished(server, v) for v in views]
    assert all(d["state"] == "done" for d in done)


def test_a_full_waiting_room_refuses_at_once(tmp_path) -> None:
    release = threading.Event()

    def work(job: Job) -> list[str]:
        release.wait(30)
        return []

    line = JobQueue(capacity=2)
    try:
        for i in range(3):  # one running, two waiting
            line.submit(Job(f"{i:04d}", tmp_path, "", work))
            deadline = time.monotonic() + 10
            while i == 0 and line.view("0000")["state"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert line.view("0002")["ahead"] == 2
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            line.submit(Job("0003", tmp_path, "", work))
        assert line.view("0003") is None
    finally:
        release.set()
        line.close()
    assert [line.view(f"{i:04d}")["state"] for i in range(3)] == ["done"] * 3


def test_a_plugin_without_a_widget_gets_a_text_field_read_as_the_command_line(
        trained_run, tmp_path, monkeypatch) -> None:
    from ldm_class.encoder import ClassEncoder

    monkeypatch.setattr(ClassEncoder, "widget", lambda self: None)
    run = copy_run(trained_run, tmp_path / "run")
    loaded = load_for_sampling(run, precision="fp32", threads=1)
    service = SamplingService(loaded, run / "samples" / "serve", max_images=8, queue_size=2,
                              settings=["precision=fp32", "threads=1"])
    try:
        (described,) = service.describe()["plugins"]
        assert described == {"name": "class", "widget": None, "guidance": None, "guided": True}
        monkeypatch.setattr(ClassEncoder, "guided", property(lambda self: False))
        assert service.describe()["plugins"][0]["guided"] is False
        with pytest.raises(RequestError, match="not a class label") as refused_value:
            service.submit(WebRequest(cond={"class": "seven"}))
        assert set(refused_value.value.fields) == {"class"}
        job = service.submit(WebRequest(cond={"class": "[2, 5]"}, n=1, seed=3))
        deadline = time.monotonic() + 120
        while job["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
            job = service.queue.view(job["id"])
    finally:
        service.queue.close()
    assert job["state"] == "done" and job["files"] == ["0000.png", "0001.png"]
    out = run_command(job["command"], tmp_path / "cli")
    for name in job["files"]:
        assert np.array_equal(pixels(service.root / job["id"] / name), pixels(out / name))
