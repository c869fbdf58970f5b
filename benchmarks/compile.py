"""``--compile`` (``torch.compile`` of the UNet) against the plain UNet: seconds per video, the
same runs side by side in one process, after a warm-up video each (the compiled one compiles
there), and the largest difference between their frames.

    python benchmarks/compile.py                      # the bundled toy model, gi, on the CPU
    python benchmarks/compile.py --videos 5 --method trf

Writes benchmarks/results/compile.json and compile.md (the machine is recorded).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--method", default="gi")
    p.add_argument("--videos", type=int, default=3, help="timed videos per variant")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternations plain/compiled (each round times every video of both)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)

    import torch

    from inbetweening.loading import load_pipeline
    from inbetweening.toy.world import WORLDS, make_clip

    clip = make_clip(123, 0, WORLDS["toy"], stay_in_view=True).video[0]
    start, end = (((clip[i].permute(1, 2, 0).numpy()) * 255).astype(np.uint8) for i in (0, -1))
    pipes = {"plain": load_pipeline(a.model, device=a.device, quiet=True),
             "compiled": load_pipeline(a.model, device=a.device, quiet=True, compile=True)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def video(name: str, seed: int) -> np.ndarray:
        pipe = pipes[name]
        return pipe(start, end, method=a.method, generator=torch.Generator().manual_seed(seed),
                    output_type="np", **pipe.defaults).frames[0]

    first = {}
    for name in pipes:  # warm-up (the compiled UNet compiles here)
        t0 = time.perf_counter()
        first[name] = video(name, 0)
        print(f"{name}: first video {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in pipes}
    for _ in range(a.rounds):
        for name in pipes:
            for i in range(a.videos):
                t0 = time.perf_counter()
                video(name, 1 + i)
                times[name].append(time.perf_counter() - t0)
    plain, compiled = (float(np.median(times[n])) for n in ("plain", "compiled"))
    result = {
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "device": a.device, "torch": torch.__version__},
        "model": a.model or "bundled toy", "method": a.method,
        "predictions_per_video": pipes["plain"].num_predictions,
        "videos_timed": len(times["plain"]), "seconds_per_video": {"plain": plain,
                                                                   "compiled": compiled},
        "speedup": plain / compiled,
        "max_frame_difference": float(np.abs(first["plain"] - first["compiled"]).max()),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compile.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ("| variant | s / video (median) |\n|---|---|\n"
          f"| plain UNet | {plain:.2f} |\n| `--compile` | {compiled:.2f} |\n\n"
          f"speed-up {plain / compiled:.2f}x; {result['videos_timed']} videos each, alternating "
          f"in {a.rounds} rounds, one process; {a.method}, {result['predictions_per_video']} "
          f"predictions per video; frames differ by at most "
          f"{result['max_frame_difference']:.1e}; {result['machine']}\n")
    (a.out / "compile.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
