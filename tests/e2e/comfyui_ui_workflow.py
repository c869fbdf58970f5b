"""Writes the example workflow's UI format (comfyui/example_workflows/inbetween_toy.json) from its
API format (comfyui/api_workflows/inbetween_toy.json), through ComfyUI's own page: the API
workflow is loaded there, its nodes laid out and its seed fixed, and the page's serialisation is
saved (nulls left out). Run by hand against a running ComfyUI with the node pack installed:

    python tests/e2e/comfyui_ui_workflow.py http://127.0.0.1:8188/

tests/e2e/test_comfyui.py checks that the page turns the saved UI workflow back into the API one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "comfyui" / "api_workflows" / "inbetween_toy.json"
UI = ROOT / "comfyui" / "example_workflows" / "inbetween_toy.json"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# node id -> (x, y, width, height) on the canvas (a title bar of 30 above y), and the view
LAYOUT = {1: (20, 30, 260, 290), 2: (20, 400, 260, 290), 3: (310, 30, 290, 110),
          4: (310, 180, 290, 420), 5: (640, 30, 420, 250), 6: (640, 330, 240, 80),
          7: (900, 330, 260, 110)}
VIEW = {"scale": 0.9, "offset": [69, 111]}

def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def main(url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
        ui = page.evaluate("""async ([api, layout]) => {
            await window.app.loadApiJson(api, "inbetween_toy");
            for (const node of window.app.graph._nodes) {
                const [x, y, w, h] = layout[node.id];
                node.pos = [x, y];
                node.size = [w, h];
                for (const widget of node.widgets || [])
                    if (widget.name === "control_after_generate") widget.value = "fixed";
            }
            return window.app.graph.serialize();
        }""", [json.loads(API.read_text()), LAYOUT])
        browser.close()
    ui["extra"] = {"ds": VIEW}
    UI.write_text(json.dumps(without_nulls(ui), indent=1) + "\n")
    print(f"wrote {UI}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188/")
