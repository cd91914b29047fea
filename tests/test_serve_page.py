"""The page of ``ldm serve`` in a real browser (headless Chromium): a person fills each plugin's
input - picks a class, types a prompt, draws a box, paints a region, uploads a PNG - and the
images the page shows are, pixel for pixel, those of the ``ldm sample`` command it shows.

``LDM_SERVE_SCREENSHOTS=DIR`` also saves a screenshot of each page in DIR (docs/serve/), and with
``LDM_SERVE_DEMO_RUN=runs/demo`` (after ``make demo``) one of the demo run's page.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="ldm serve needs its extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="ldm serve needs its extra: pip install -e '.[serve]'")

from tests.serve_helpers import (assert_same_images, chromium, command_words, pixels,  # noqa: E402
                                 run_command, start_server, stop_server)

pytestmark = pytest.mark.slow

By = pytest.importorskip("selenium.webdriver.common.by", reason="pip install selenium").By
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SHOTS = os.environ.get("LDM_SERVE_SCREENSHOTS")
DEMO_RUN = os.environ.get("LDM_SERVE_DEMO_RUN")


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def open_page(browser, server) -> None:
    browser.get(server.url)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def plugin(browser, name: str):
    return browser.find_element(By.CSS_SELECTOR, f'section.plugin[data-plugin="{name}"]')


def set_number(browser, element_id: str, value: int) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def sample(browser, server) -> tuple[str, dict | None]:
    """Press Sample and wait for the outcome; returns the final state and the job (when done)."""
    browser.execute_script("document.getElementById('status').dataset.state = 'idle'")
    browser.find_element(By.ID, "sample").click()
    WebDriverWait(browser, 240, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "failed", "refused"))
    state = browser.find_element(By.ID, "status").get_attribute("data-state")
    if state != "done":
        return state, None
    link = browser.find_element(By.CSS_SELECTOR, "#images a.download").get_attribute("href")
    job_id = re.search(r"/api/jobs/(\d+)/", link).group(1)
    job = json.loads(server.get(f"/api/jobs/{job_id}"))
    assert browser.find_element(By.ID, "command").text == job["command"]
    return state, job


def sampled(browser, server, shot: str) -> tuple[dict, dict[str, str]]:
    """Sample two images; the job and its command's ``cond.NAME`` words, after a screenshot."""
    set_number(browser, "n", 2)
    state, job = sample(browser, server)
    assert state == "done", browser.find_element(By.ID, "error").text
    screenshot(browser, shot)
    return job, dict(w.split("=", 1) for w in command_words(job["command"]) if w.startswith("cond."))


def drag(browser, canvas, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
    """Press at ``start``, move to ``end`` and release; points are fractions of the canvas."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)  # offsets
    w, h = canvas.size["width"], canvas.size["height"]  # count from the centre of what is in view
    at = lambda p: (round((p[0] - 0.5) * w), round((p[1] - 0.5) * h))  # noqa: E731 - offsets from the centre
    actions = ActionChains(browser).move_to_element_with_offset(canvas, *at(start)).click_and_hold()
    x0, y0 = at(start)
    for i in range(1, steps + 1):
        x, y = at((start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps))
        actions.move_by_offset(x - x0, y - y0)
        x0, y0 = x, y
    actions.release().perform()


def screenshot(browser, name: str) -> None:
    """The whole page as ``SHOTS/name.png`` (when screenshots are asked for)."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1000, "height": height, "deviceScaleFactor": 1, "mobile": False})
    path = Path(SHOTS) / f"{name}.png"
    browser.save_screenshot(str(path))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)  # small for the docs


def test_class_page_gives_the_pixels_of_its_command(browser, class_server, tmp_path) -> None:
    open_page(browser, class_server)
    Select(plugin(browser, "class").find_element(By.TAG_NAME, "select")).select_by_visible_text("3")
    set_number(browser, "seed", 5)
    set_number(browser, "n", 3)
    state, job = sample(browser, class_server)
    assert state == "done"
    words = command_words(job["command"])
    assert {"cond.class=3", "seed=5", "n=3"} <= set(words)
    assert browser.find_element(By.ID, "grid").get_attribute("src").endswith("/grid.png")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#images a.download[download]")) == 3
    screenshot(browser, "class")
    assert_same_images(class_server, job, run_command(job["command"], tmp_path / "cli"))


def test_shapes_page_reads_prompt_box_painting_and_upload(browser, shapes_server, tmp_path) -> None:
    server = shapes_server
    open_page(browser, server)
    plugin(browser, "text").find_element(By.TAG_NAME, "input").send_keys("a red circle")
    layout = plugin(browser, "layout")
    Select(layout.find_element(By.CSS_SELECTOR, "select.box-class")).select_by_visible_text("1: square")
    drag(browser, layout.find_element(By.TAG_NAME, "canvas"), (0.2, 0.25), (0.7, 0.6))
    segmap = plugin(browser, "segmap")
    Select(segmap.find_element(By.CSS_SELECTOR, "select.paint-class")).select_by_visible_text("1: circle")
    drag(browser, segmap.find_element(By.TAG_NAME, "canvas"), (0.3, 0.5), (0.7, 0.5))
    job, cond = sampled(browser, server, "shapes_multi")
    assert cond["cond.text"] == "a red circle"
    (box,) = json.loads(cond["cond.layout"])  # the box as dragged, in image fractions
    assert box[4] == "square" and np.allclose(box[:4], [0.2, 0.25, 0.7, 0.6], atol=0.02)
    painted = pixels(Path(cond["cond.segmap"]))  # the painting, saved as a map of class indices
    assert painted.shape == (16, 16) and set(np.unique(painted)) == {0, 1}
    assert (painted[8, 5:11] == 1).all() and (painted[0] == 0).all() and (painted[15] == 0).all()
    assert_same_images(server, job, run_command(job["command"], tmp_path / "painted"))

    small, good = tmp_path / "small.png", tmp_path / "map.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small)
    labels = np.zeros((16, 16), np.uint8)
    labels[3:12, 4:13] = 2
    Image.fromarray(labels).save(good)
    upload = segmap.find_element(By.CSS_SELECTOR, "input.upload")
    upload.send_keys(str(small))
    state, _ = sample(browser, server)
    message = segmap.find_element(By.CSS_SELECTOR, ".field-error").text
    assert state == "refused" and "8x8" in message and "16x16" in message
    screenshot(browser, "error")
    upload.clear()
    upload.send_keys(str(good))
    state, job = sample(browser, server)
    assert state == "done" and segmap.find_element(By.CSS_SELECTOR, ".field-error").text == ""
    cond = dict(w.split("=", 1) for w in command_words(job["command"]) if w.startswith("cond."))
    assert Path(cond["cond.segmap"]).read_bytes() == good.read_bytes()  # the upload, as sent
    assert_same_images(server, job, run_command(job["command"], tmp_path / "uploaded"))


def test_photos_page_reads_an_uploaded_image_and_a_painted_hole(browser, photos_server, tmp_path) -> None:
    server = photos_server
    rng = np.random.default_rng(0)
    photo = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(photo[::4, ::4]).save(tmp_path / "low.png")
    open_page(browser, server)
    plugin(browser, "lowres").find_element(By.CSS_SELECTOR, "input.upload").send_keys(str(tmp_path / "low.png"))
    inpaint = plugin(browser, "inpaint")
    inpaint.find_element(By.CSS_SELECTOR, "input.upload").send_keys(str(tmp_path / "photo.png"))
    drag(browser, inpaint.find_element(By.TAG_NAME, "canvas"), (0.25, 0.5), (0.75, 0.5))
    job, cond = sampled(browser, server, "photos")
    assert Path(cond["cond.lowres"]).read_bytes() == (tmp_path / "low.png").read_bytes()
    image, mask = (Path(p) for p in cond["cond.inpaint"].split(","))
    assert image.read_bytes() == (tmp_path / "photo.png").read_bytes()
    hole = pixels(mask) == 255  # the stroke: a band through the middle row
    assert hole[8, 5:11].all() and not hole[0].any() and not hole[15].any()
    out = run_command(job["command"], tmp_path / "cli")
    assert_same_images(server, job, out)
    first = pixels(out / job["files"][0])
    assert np.array_equal(first[~hole], photo[~hole])  # inpainting keeps the known pixels


@pytest.mark.skipif(not DEMO_RUN, reason="set LDM_SERVE_DEMO_RUN=runs/demo (a run of make demo) "
                                         "to sample the demo run in the browser")
def test_demo_page(browser, tmp_path) -> None:
    server = start_server(Path(DEMO_RUN).resolve(), tmp_path)
    try:
        open_page(browser, server)
        Select(plugin(browser, "class").find_element(By.TAG_NAME, "select")).select_by_visible_text("7")
        set_number(browser, "n", 8)
        state, job = sample(browser, server)
        assert state == "done"
        screenshot(browser, "demo")
    finally:
        stop_server(server)
