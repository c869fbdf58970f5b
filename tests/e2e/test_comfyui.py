"""End to end: the node pack in a real ComfyUI (the fixture's 0.8.0), started headless on the CPU
on a free port with a base folder of its own, driven over its HTTP and websocket API.

The nodes are listed in /object_info; the example workflow (API format) on the bundled toy model
makes 8 frames whose first and last are the keyframes, saved as PNGs equal to the CLI's frames
for the same seed and as an mp4 of 8 frames; the progress bar counts the steps; a batch of
keyframes with loop gives the CLI's loop; bad input is a node error carrying our one-line message
and the server goes on; Cancel stops a running sampler early; the UI-format workflow is the API
one, and a screenshot of it after a run in ComfyUI's page is taken (headless Chromium).

Runs only where `make comfyui-e2e` set ComfyUI up (INBETWEENING_COMFYUI_E2E=1,
INBETWEENING_COMFYUI_DIR: the unpacked ComfyUI, INBETWEENING_COMFYUI_PYTHON: the Python of its
environment, with this package installed). Set INBETWEENING_COMFYUI_SCREENSHOT=docs/comfyui.png
to keep the screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from test_app_browser import CHROMIUM, CHROMIUM_ARGS, free_port

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "comfyui"
API_WORKFLOW = PACK / "api_workflows" / "inbetween_toy.json"
UI_WORKFLOW = PACK / "example_workflows" / "inbetween_toy.json"
KEYFRAMES = ("inbetween_start.png", "inbetween_end.png")
COMFYUI = os.environ.get("INBETWEENING_COMFYUI_DIR")
PYTHON = os.environ.get("INBETWEENING_COMFYUI_PYTHON")
REQUIRED = os.environ.get("INBETWEENING_COMFYUI_E2E") == "1"
START_TIMEOUT = 300  # s: importing torch and every core node on a busy 2-core machine
RUN_TIMEOUT = 600  # s for one workflow
SAMPLER = "4"  # the sampler's node id in the example workflow


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI as `main.py --cpu` starts it, with the node pack linked into custom_nodes/ of a
    fresh base folder; its models/ hold a backward-weights file, a diffusers folder that is not
    SVD and a copy of the toy model without its backward weights."""
    missing = [n for n, v in (("INBETWEENING_COMFYUI_DIR", COMFYUI),
                              ("INBETWEENING_COMFYUI_PYTHON", PYTHON)) if not v]
    if missing:
        (pytest.fail if REQUIRED else pytest.skip)(
            f"{', '.join(missing)} not set (make comfyui-e2e sets ComfyUI up)")
    from inbetweening.loading import bundled_model

    base = tmp_path_factory.mktemp("comfyui")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-inbetweening").symlink_to(PACK)
    (base / "input").mkdir()
    for name in KEYFRAMES:
        shutil.copy(PACK / "example_workflows" / name, base / "input" / name)
    PIL.Image.new("RGB", (128, 64), (90, 90, 90)).save(base / "input" / "wide.png")
    toy = bundled_model()
    models = base / "models"
    (models / "inbetweening").mkdir(parents=True)
    shutil.copy(toy / "backward.safetensors", models / "inbetweening" / "toy-backward.safetensors")
    (models / "diffusers" / "not-svd").mkdir(parents=True)
    (models / "diffusers" / "not-svd" / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    shutil.copytree(toy, models / "diffusers" / "toy-no-backward",
                    ignore=shutil.ignore_patterns("backward.safetensors"))
    (base / "user" / "default").mkdir(parents=True)  # the page: no first-visit dialog, no minimap
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
        {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
         "Comfy.Graph.CanvasInfo": False}))
    yield from _serve(base)


def _serve(base: Path):
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--base-directory", str(base)],
        cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT, env={**os.environ,
                                                                 "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return (base / "server.log").read_text()[-4000:]

    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with status {proc.returncode}:\n{tail()}")
        try:
            get(url, "/object_info/InbetweenSampler")
            break
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"ComfyUI did not answer on {url} in {START_TIMEOUT} s:\n{tail()}")
        time.sleep(1)
    events = Events(port)
    try:
        yield {"url": url, "base": base, "pid": proc.pid, "log": tail, "events": events}
    finally:
        proc.terminate()  # by its PID
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=30) as r:
        return json.load(r)


class Events:
    """ComfyUI's websocket messages to one client id, collected by a thread (a minimal client:
    the upgrade, then the server's unmasked frames)."""

    def __init__(self, port: int):
        self.client_id = uuid.uuid4().hex
        self.messages: list[dict] = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={self.client_id} HTTP/1.1\r\n"
                           f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.stream = self.sock.makefile("rb")
        status = self.stream.readline()
        assert b" 101 " in status, status
        while self.stream.readline() not in (b"\r\n", b""):
            pass
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            head = self.stream.read(2)
            if len(head) < 2:
                return
            size = head[1] & 0x7F
            if size >= 126:
                size = int.from_bytes(self.stream.read(2 if size == 126 else 8), "big")
            payload = self.stream.read(size)
            if head[0] & 0x0F == 1:  # a text frame: one JSON message
                self.messages.append(json.loads(payload))

    def of(self, prompt_id: str, kind: str) -> list[dict]:
        return [m["data"] for m in list(self.messages)
                if m.get("type") == kind and m.get("data", {}).get("prompt_id") == prompt_id]


def post(comfy, workflow: dict) -> str:
    body = json.dumps({"prompt": workflow, "client_id": comfy["events"].client_id}).encode()
    request = urllib.request.Request(comfy["url"] + "/prompt", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)["prompt_id"]


def finished(comfy, prompt_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    """The prompt's /history entry once it has run (or failed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = get(comfy["url"], f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s:\n{comfy['log']()}")


def example(**sampler) -> dict:
    """The example workflow, with the sampler's inputs changed by ``sampler``."""
    workflow = json.loads(API_WORKFLOW.read_text())
    workflow[SAMPLER]["inputs"].update(sampler)
    return workflow


def message(entry: dict, kind: str) -> dict:
    found = [data for name, data in entry["status"]["messages"] if name == kind]
    assert found, entry["status"]
    return found[0]


def output_files(comfy, entry: dict, node: str, key: str) -> list[Path]:
    return [comfy["base"] / "output" / item["subfolder"] / item["filename"]
            for item in entry["outputs"][node][key]]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def test_the_nodes_are_listed_with_our_models_and_weights(comfy):
    info = get(comfy["url"], "/object_info")
    assert {"InbetweenModelLoader", "InbetweenSampler"} <= set(info)
    loader = info["InbetweenModelLoader"]["input"]["required"]
    assert loader["model"][0] == ["toy", "toy-ambiguous", "not-svd", "toy-no-backward"]
    assert loader["backward_weights"][0] == ["auto", "toy-backward.safetensors"]
    sampler = info["InbetweenSampler"]
    assert sampler["output"] == ["IMAGE", "FLOAT"] and sampler["category"] == "Inbetweening"
    assert "end" in sampler["input"]["optional"]


def test_example_workflow_makes_the_clis_frames(comfy, tmp_path):
    from inbetweening import media

    prompt_id = post(comfy, example())
    entry = finished(comfy, prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    frames = [np.asarray(PIL.Image.open(p).convert("RGB"))
              for p in output_files(comfy, entry, "5", "images")]
    keyframes = [np.asarray(PIL.Image.open(PACK / "example_workflows" / n)) for n in KEYFRAMES]
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)  # the toy model's defaults
    assert psnr(frames[0], keyframes[0]) > 20 and psnr(frames[-1], keyframes[1]) > 20
    assert psnr(frames[0], keyframes[1]) < psnr(frames[0], keyframes[0]) - 3

    (video_file,) = output_files(comfy, entry, "7", "images")
    video, fps = media.read_video(video_file)
    assert video.shape == (8, 64, 64, 3) and fps == pytest.approx(7)
    assert psnr(video[0], keyframes[0]) > 20 and psnr(video[-1], keyframes[1]) > 20

    progress = [m for m in comfy["events"].of(prompt_id, "progress") if m["node"] == SAMPLER]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 25  # the toy's steps

    out = tmp_path / "cli"
    keyframe_paths = [str(PACK / "example_workflows" / n) for n in KEYFRAMES]
    subprocess.run([sys.executable, "-m", "inbetweening.cli", "interpolate", *keyframe_paths,
                    "-o", str(out), "--seed", "42", "--device", "cpu"], check=True)
    cli_frames, _ = media.read_video(out)
    np.testing.assert_array_equal(np.stack(frames), cli_frames)


def test_ui_workflow_is_the_api_workflow_and_a_screenshot(comfy, tmp_path):
    """In ComfyUI's page: the UI-format example turns into the API-format one; run from the page
    (right after the same workflow ran through the API: ComfyUI answers from its cache) it shows
    its frames; a screenshot is taken."""
    if not os.access(CHROMIUM, os.X_OK):
        (pytest.fail if REQUIRED else pytest.skip)(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.set_default_timeout(120_000)
        page.goto(comfy["url"] + "/", wait_until="networkidle")
        page.wait_for_function("() => window.app && window.app.graph")
        api = page.evaluate("""async (ui) => {
            await window.app.loadGraphData(ui, true, true, "inbetween_toy");
            return (await window.app.graphToPrompt()).output;
        }""", json.loads(UI_WORKFLOW.read_text()))
        want = json.loads(API_WORKFLOW.read_text())
        assert {k: (v["class_type"], v["inputs"]) for k, v in api.items()} == \
            {k: (v["class_type"], v["inputs"]) for k, v in want.items()}
        before = set(get(comfy["url"], "/history"))
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        deadline = time.time() + RUN_TIMEOUT
        while not (new := set(get(comfy["url"], "/history")) - before):
            assert time.time() < deadline, comfy["log"]()
            time.sleep(0.5)
        entry = finished(comfy, new.pop())
        assert entry["status"]["status_str"] == "success", entry["status"]
        time.sleep(3)  # the frames drawn on the Save node
        shot = tmp_path / "comfyui.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert PIL.Image.open(shot).size == (1200, 760)
    if os.environ.get("INBETWEENING_COMFYUI_SCREENSHOT"):
        shutil.copy(shot, os.environ["INBETWEENING_COMFYUI_SCREENSHOT"])
    print(f"\nscreenshot: {shot}")


def test_a_keyframe_batch_with_loop_makes_the_clis_loop(comfy, tmp_path):
    """Two keyframes as one IMAGE batch (core ImageBatch) into `start`, no `end`, loop: the
    CLI's `interpolate A B --loop` (two segments, the closing frame dropped), frame for frame."""
    from inbetweening import media

    workflow = example(start=["8", 0], loop=True, steps=2, seed=3)
    del workflow[SAMPLER]["inputs"]["end"], workflow["6"], workflow["7"]
    workflow["8"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0],
                                                            "image2": ["2", 0]}}
    workflow["5"]["inputs"]["filename_prefix"] = "loop/frame"
    entry = finished(comfy, post(comfy, workflow))
    assert entry["status"]["status_str"] == "success", entry["status"]
    frames = np.stack([np.asarray(PIL.Image.open(p).convert("RGB"))
                       for p in output_files(comfy, entry, "5", "images")])
    assert frames.shape == (14, 64, 64, 3)  # 2 segments of 8 frames, shared ends once
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "inbetweening.cli", "interpolate",
                    *[str(PACK / "example_workflows" / n) for n in KEYFRAMES], "--loop",
                    "--steps", "2", "-o", str(out), "--seed", "3", "--device", "cpu"],
                   check=True)
    np.testing.assert_array_equal(frames, media.read_video(out)[0])


BAD_INPUTS = {
    "keyframes of different aspect ratios": (
        {"2": {"image": "wide.png"}}, SAMPLER,
        "keyframes have different aspect ratios (64x64, 128x64)"),
    "a model folder that is not SVD": (
        {"3": {"model": "not-svd"}}, "3", "does not describe an SVD model (no vae, "
                                          "image_encoder, scheduler, feature_extractor)"),
    "gi without backward weights": (
        {"3": {"model": "toy-no-backward"}}, SAMPLER, "method 'gi' needs backward weights"),
    "a size that is not a multiple of 8": (
        {SAMPLER: {"width": 100, "height": 64}}, SAMPLER,
        "size 100x64 is not a multiple of 8 in both sides"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_node_error_with_our_message(comfy, case):
    changes, node, text = BAD_INPUTS[case]
    workflow = example()
    for node_id, inputs in changes.items():
        workflow[node_id]["inputs"].update(inputs)
    entry = finished(comfy, post(comfy, workflow))
    error = message(entry, "execution_error")
    assert error["node_id"] == node
    assert error["exception_type"] == "inbetweening.utils.InbetweeningError"
    assert text in error["exception_message"]
    assert len(error["exception_message"].strip().splitlines()) == 1
    assert get(comfy["url"], "/system_stats")["system"]["comfyui_version"]  # still serving


def test_cancel_stops_the_sampler_early(comfy):
    prompt_id = post(comfy, example(steps=1000, seed=7))  # minutes of work on this CPU
    deadline = time.time() + RUN_TIMEOUT
    while not [m for m in comfy["events"].of(prompt_id, "progress") if m["node"] == SAMPLER]:
        assert time.time() < deadline, comfy["log"]()
        time.sleep(0.2)
    urllib.request.urlopen(urllib.request.Request(comfy["url"] + "/interrupt", data=b"",
                                                  method="POST"), timeout=30)
    t0 = time.time()
    entry = finished(comfy, prompt_id)
    stopped_after = time.time() - t0
    interrupted = message(entry, "execution_interrupted")
    assert interrupted["node_id"] == SAMPLER
    progress = [m for m in comfy["events"].of(prompt_id, "progress") if m["node"] == SAMPLER]
    assert progress[-1]["max"] == 1000 and progress[-1]["value"] < 100
    assert "5" not in entry.get("outputs", {})  # nothing was saved
    assert stopped_after < 60, stopped_after
    print(f"\ncancelled at step {progress[-1]['value']} of 1000, {stopped_after:.1f} s after "
          "the request")
