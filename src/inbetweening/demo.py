"""``inbetween demo``: the method on held-out toy clips, beside the truth and the baselines.

For a few held-out clips of the toy world, the first and last frames are the keyframes; ``gi``
(the paper), ``trf`` (time-reversal fusion) and plain ``forward`` SVD generate the frames
between, and the demo writes each video, a side-by-side comparison with the true clip (GIF and
MP4), a PNG contact sheet, and the tracker's metrics (``metrics.md``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from tqdm.auto import tqdm

from .media import write_video
from .toy.tracker import track_metrics
from .toy.world import HELD_OUT_SEED, make_clip
from .utils import InbetweeningError, atomic_path

DEMO_SEED = HELD_OUT_SEED + 100  # the demo's clips: held out from training, fixed
METHODS = ("gi", "trf", "forward")
LABEL_W = 64  # width of the label column of the contact sheet, in source pixels


def demo_clips(count: int):
    """The demo's keyframe pairs: held-out clips whose vehicles stay in view."""
    return [make_clip(DEMO_SEED, i, stay_in_view=True) for i in range(count)]


def _frames(video: torch.Tensor) -> np.ndarray:
    """(1, F, 3, H, W) in [0, 1] -> (F, H, W, 3) float."""
    return video[0].permute(0, 2, 3, 1).numpy()


def _label(text: str, height: int, width: int = LABEL_W) -> np.ndarray:
    im = PIL.Image.new("RGB", (width, height), (24, 24, 24))
    PIL.ImageDraw.Draw(im).text((4, height // 2 - 6), text, fill=(235, 235, 235))
    return np.asarray(im).astype(np.float32) / 255.0


def comparison(rows: dict[str, np.ndarray], gap: int = 2) -> np.ndarray:
    """Videos side by side, one labelled panel each: (F, H, W, 3) each -> (F, H', W', 3)."""
    out = []
    names = list(rows)
    f = len(rows[names[0]])
    for i in range(f):
        panels = []
        for n in names:
            frame = rows[n][i]
            head = _label(n, 12, frame.shape[1])
            panels.append(np.concatenate([head, frame], 0))
            panels.append(np.full((frame.shape[0] + 12, gap, 3), 1.0, np.float32))
        out.append(np.concatenate(panels[:-1], 1))
    return np.stack(out)


def contact_sheet(pairs: list[dict[str, np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Rows = (pair, method), columns = frames; a white line between pairs."""
    blocks = []
    for rows in pairs:
        for name, video in rows.items():
            h = video.shape[1]
            frames = [np.concatenate([f, np.ones((h, gap, 3), np.float32)], 1) for f in video]
            blocks.append(np.concatenate([_label(name, h)] + frames, 1))
        blocks.append(np.ones((gap * 2, blocks[-1].shape[1], 3), np.float32))
    sheet = np.concatenate(blocks[:-1], 0)
    im = PIL.Image.fromarray((sheet * 255).round().astype(np.uint8))
    return np.asarray(im.resize((im.width * scale, im.height * scale), PIL.Image.NEAREST))


def metrics_table(per_method: dict[str, list[dict]]) -> str:
    keys = [("trajectory_error", "trajectory error (px) ↓"),
            ("direction_consistency", "direction consistency ↑"),
            ("endpoint_psnr", "endpoint PSNR (dB) ↑")]
    lines = ["| method | " + " | ".join(k[1] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for method, runs in per_method.items():
        cells = [f"{np.mean([r[k] for r in runs]):.3f}" for k, _ in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_demo(pipe, out: Path, *, pairs: int = 3, seed: int = 0, overwrite: bool = False,
             methods=METHODS, call_kwargs: dict | None = None) -> dict:
    """Write the demo into ``out`` (atomically). Returns the metrics by method."""
    if Path(out).exists() and not overwrite:
        raise InbetweeningError(f"{out} already exists (pass --overwrite to replace it)")
    if pairs < 1:
        raise InbetweeningError("--pairs must be at least 1")
    clips = demo_clips(pairs)
    kw = dict(call_kwargs or {})  # (the pipeline adds the model's and the methods' settings)
    frames = clips[0].video.shape[1]
    size = clips[0].video.shape[-1]
    kw.update(num_frames=frames, height=size, width=size, output_type="pt")
    per_method = {m: [] for m in methods}
    sheets = []
    t0 = time.time()
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        bar = tqdm(total=pairs * len(methods), desc="demo", unit="video")
        for i, clip in enumerate(clips):
            truth = clip.video[0]  # (F, 3, H, W)
            start, end = truth[0], truth[-1]
            rows = {"truth": _frames(clip.video)}
            for method in methods:
                g = torch.Generator().manual_seed(seed + i)
                video = pipe(start, end, method=method, generator=g, **kw).frames
                rows[method] = _frames(video.float().cpu())
                per_method[method].append(track_metrics(
                    rows[method], clip.colors[0].numpy(), clip.centers[0].numpy(),
                    clip.headings[0].numpy(), clip.present[0].numpy(),
                    start.permute(1, 2, 0).numpy(), end.permute(1, 2, 0).numpy()))
                bar.update()
            pair_dir = tmp / f"pair-{i}"
            pair_dir.mkdir()
            for name, video in rows.items():
                write_video(video, pair_dir / f"{name}.mp4", fps=kw.get("fps", 7))
            both = comparison(rows)
            write_video(both, pair_dir / "comparison.gif", fps=4)
            write_video(both, pair_dir / "comparison.mp4", fps=4)
            sheets.append(rows)
        bar.close()
        sheet = contact_sheet(sheets)
        PIL.Image.fromarray(sheet).save(tmp / "contact_sheet.png")
        table = metrics_table(per_method)
        summary = {m: {k: float(np.mean([r[k] for r in runs])) for k in
                       ("trajectory_error", "direction_consistency", "endpoint_psnr")}
                   for m, runs in per_method.items()}
        steps = ", ".join(f"{m} {pipe.call_settings(m, **kw)[0]['num_inference_steps']}"
                          for m in methods)
        (tmp / "metrics.md").write_text(
            f"Tracker metrics over {pairs} held-out toy clips (seed {DEMO_SEED}), each method "
            f"at its own settings (steps: {steps}), sampling seed {seed}:\n\n{table}")
        (tmp / "metrics.json").write_text(json.dumps(
            {"methods": summary, "pairs": pairs, "call": {k: v for k, v in kw.items()
                                                           if k != "output_type"}}, indent=2))
    print(table)
    print(f"wrote {out} ({time.time() - t0:.0f} s): contact_sheet.png, pair-*/comparison.gif, "
          "metrics.md")
    return summary
