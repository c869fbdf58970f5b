"""End to end: `inbetween app` started on localhost in a subprocess, driven in Debian's Chromium by
Playwright. Refused uploads (a text file named .png, a 50 MB image) get a message on the page;
two toy keyframes then make a video that plays on the page, whose mp4 download decodes to the
frames the page announced; a screenshot is saved.

Runs where Playwright and Chromium are installed (`make e2e` installs both and sets
INBETWEENING_E2E=1, which turns a missing piece into a failure instead of a skip). Set
INBETWEENING_E2E_SCREENSHOT=docs/app.png to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

CHROMIUM = os.environ.get("INBETWEENING_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("INBETWEENING_E2E") == "1"
# Chromium as root on a machine without a network of its own: no sandbox, no GPU, and none of
# its background calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 300  # s; importing torch, diffusers and gradio on a busy 2-core machine
RUN_TIMEOUT = 300_000  # ms for one generation


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make e2e installs it)"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed (the app extra)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (make e2e installs Debian's chromium)"
    return None


def _require() -> None:
    reason = _missing()
    if reason and REQUIRED:
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def host_of(url: str) -> str:
    """'127.0.0.1:7860' for http://127.0.0.1:7860/x (blob: URLs by their origin); 'data' for
    data: URLs."""
    url = url.removeprefix("blob:")
    match = re.match(r"^[a-z]+://([^/]+)", url)
    return match.group(1) if match else url.split(":")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as a user starts it (default model, default host), on a free port."""
    _require()
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    log = open(root / "server.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio-cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "inbetweening.cli", "app", "--port", str(port),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=root)
    url = f"http://127.0.0.1:{port}/"

    def tail() -> str:
        return (root / "server.log").read_text()[-3000:]

    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with status {proc.returncode}:\n{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer on {url} in {START_TIMEOUT} s:\n{tail()}")
        time.sleep(1)
    try:
        yield {"url": url, "port": port, "pid": proc.pid, "log": tail, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two keyframes of a held-out toy clip (first and last frame), and two bad uploads."""
    from inbetweening.toy.world import HELD_OUT_SEED, make_clip

    root = tmp_path_factory.mktemp("uploads")
    clip = make_clip(HELD_OUT_SEED, 3, stay_in_view=True).video[0]
    out = {}
    for name, frame in (("first.png", clip[0]), ("last.png", clip[-1])):
        image = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        PIL.Image.fromarray(image).save(root / name)
        out[name] = str(root / name)
    (root / "notes.png").write_text("a shopping list, not a picture\n")
    out["notes.png"] = str(root / "notes.png")
    noise = np.random.default_rng(0).integers(0, 256, (4200, 4200, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(root / "huge.bmp")  # 50.5 MB
    assert (root / "huge.bmp").stat().st_size > 50 * 2**20
    out["huge.bmp"] = str(root / "huge.bmp")
    return out


@pytest.fixture
def browser_page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 960})
        page = context.new_page()
        page.set_default_timeout(60_000)
        hosts = set()
        page.on("request", lambda r: hosts.add(host_of(r.url)))
        try:
            yield page, hosts
        finally:
            context.close()


def test_listens_on_localhost_only(server):
    import psutil

    listening = [c.laddr for c in psutil.Process(server["pid"]).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, server["log"]()
    assert {a.ip for a in listening} == {"127.0.0.1"}
    assert server["port"] in {a.port for a in listening}


def upload(page, paths) -> None:
    page.locator("#keyframes input[type=file]").set_input_files(paths)


def wait_for_text(page, selector: str, pattern: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText); }",
        arg=[selector, pattern], timeout=timeout)
    return page.locator(selector).inner_text()


def test_upload_keyframes_generate_watch_download(server, files, browser_page, tmp_path):
    from inbetweening import media

    page, hosts = browser_page
    t0 = time.time()
    page.goto(server["url"], wait_until="networkidle")
    wait_for_text(page, "#status", "Upload two or more keyframes")

    # Bad uploads: a message on the page, nothing kept.
    upload(page, [files["notes.png"]])
    notice = wait_for_text(page, "#notice", "Refused")
    assert "notes.png: not an image file" in notice
    upload(page, [files["huge.bmp"]])
    notice = wait_for_text(page, "#notice", "huge.bmp")
    assert "huge.bmp: 50.5 MB is larger than the 20 MB upload limit" in notice

    # The next request is served: two toy keyframes, in order.
    upload(page, [files["first.png"], files["last.png"]])
    wait_for_text(page, "#status", "2 keyframes")
    assert wait_for_text(page, "#notice", "^$") == ""  # the refusal is gone with a good upload
    assert page.locator("#order img").count() == 2
    captions = page.locator("#order").inner_text()
    assert captions.index("first.png") < captions.index("last.png")

    page.locator("#steps input").fill("8")
    page.locator("#fps input[type=number]").fill("4")
    page.locator("#fps input[type=number]").press("Enter")
    page.locator("#generate").click()
    # The progress bar counts the denoising steps ...
    progress = page.wait_for_function(
        "() => (document.body.innerText.match(/step \\d+\\/8|Done|Error/) || [null])[0]",
        timeout=RUN_TIMEOUT).json_value()
    assert progress.startswith("step "), progress
    # ... and the finished video plays on the page.
    message = wait_for_text(page, "#message", "Done|Error", timeout=RUN_TIMEOUT)
    assert message.startswith("Done:"), message
    frames, width, height, fps = (int(v) for v in re.search(
        r"(\d+) frames, (\d+)x(\d+), (\d+) fps", message).groups())
    assert fps == 4
    page.wait_for_function("() => { const v = document.querySelector('#result video');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }")
    shown = page.evaluate("() => { const v = document.querySelector('#result video');"
                          " return {w: v.videoWidth, h: v.videoHeight, d: v.duration}; }")
    assert (shown["w"], shown["h"]) == (width, height)
    assert shown["d"] == pytest.approx(frames / fps, abs=0.3)

    # Downloads: mp4, gif and a zip of PNG frames; the mp4 decodes to the announced frames.
    links = {Path(a.get_attribute("href")).name: a.get_attribute("href")
             for a in page.locator("#downloads a[href]").all()}
    assert {"inbetween.mp4", "inbetween.gif", "inbetween_frames.zip"} <= set(links), links
    data = page.request.get(links["inbetween.mp4"]).body()
    (tmp_path / "downloaded.mp4").write_bytes(data)
    video, rate = media.read_video(tmp_path / "downloaded.mp4")
    assert video.shape == (frames, height, width, 3) and rate == pytest.approx(fps)
    gif = page.request.get(links["inbetween.gif"])
    assert gif.ok and gif.body()[:6] == b"GIF89a"

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert PIL.Image.open(shot).size[0] == 1280
    if os.environ.get("INBETWEENING_E2E_SCREENSHOT"):
        shutil.copy(shot, os.environ["INBETWEENING_E2E_SCREENSHOT"])
    print(f"\nscreenshot: {shot}; {time.time() - t0:.1f} s in the browser")

    # The page never asked anything of the internet.
    assert hosts <= {f"127.0.0.1:{server['port']}", "data", "blob"}, hosts


def test_bad_uploads_then_the_next_request_is_served(server, files, browser_page):
    """A fresh page: a refused upload between two good ones does not break the page or the
    server (another browser session generates right after)."""
    page, _ = browser_page
    page.goto(server["url"], wait_until="networkidle")
    upload(page, [files["first.png"], files["notes.png"], files["last.png"]])
    notice = wait_for_text(page, "#notice", "Refused")
    assert "notes.png: not an image file" in notice
    wait_for_text(page, "#status", "2 keyframes")
    page.locator("#steps input").fill("1")
    page.locator("#loop input").check()
    page.locator("#generate").click()
    message = wait_for_text(page, "#message", "Done|Error", timeout=RUN_TIMEOUT)
    assert message.startswith("Done:") and "seamless loop" in message, message
