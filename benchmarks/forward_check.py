"""Does a toy forward model drive its vehicles forward, and at which speeds, from a first frame
alone? The check of the ambiguous world's forward model (each vehicle slow or fast): its
direction consistency must be at least 0.8 and BOTH speeds must occur in what it generates.

    python benchmarks/forward_check.py --model runs/ambiguous --world ambiguous --pairs 24

For each held-out clip of the world, the model's ``forward`` video from the clip's first frame
is tracked (the toy tracker, the true vehicle colours and start positions); each vehicle's speed
is its mean frame-to-frame displacement along its true heading. Writes OUT/forward_check.json
and prints the direction consistency, the speeds generated and how they fall between the
world's speed modes, beside the same for the true clips.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _speeds(positions: np.ndarray, headings, found: np.ndarray) -> list[float]:
    """Per vehicle: mean displacement per frame along its heading, over the frames it is seen
    (the vehicles seen in fewer than two steps left out)."""
    from inbetweening.toy.tracker import speed_along_heading

    speeds = [speed_along_heading(p, h, f) for p, h, f in zip(positions, headings, found)]
    return [s for s in speeds if s is not None]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--world", default="ambiguous")
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/forward-check"))
    a = p.parse_args(argv)

    import PIL.Image
    import torch

    from inbetweening.evaluation import make_toy_set
    from inbetweening.evaluation.sets import load_set
    from inbetweening.loading import load_pipeline
    from inbetweening.toy.tracker import direction_consistency, track
    from inbetweening.toy.world import WORLDS

    held_out = a.out / "set"
    if not (held_out / "manifest.json").is_file():
        make_toy_set(held_out, a.pairs, world_name=a.world)
    bset = load_set(held_out)
    pipe = load_pipeline(a.model, device="cpu", quiet=True)
    pipe.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in pipe.defaults.items() if k in ("num_inference_steps",)}
    made, true, consistency = [], [], []
    for i, pair in enumerate(bset.pairs):
        start, _ = pair.keyframes()
        g = torch.Generator().manual_seed(a.seed * 100003 + i)
        video = pipe(PIL.Image.fromarray(start), method="forward", num_frames=bset.frames,
                     height=bset.height, width=bset.width, generator=g, output_type="np",
                     **kw).frames[0]
        video = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        colors = [s["color"] for s in pair.sprites]
        centers = np.array([s["centers"] for s in pair.sprites], dtype=float)
        headings = [s["heading"] for s in pair.sprites]
        tracks = track(video, colors, centers[:, 0])
        made += _speeds(np.asarray(tracks.positions), headings, np.asarray(tracks.found))
        true += _speeds(centers, headings, np.ones(centers.shape[:2], dtype=bool))
        consistency.append(direction_consistency(tracks.positions, headings))
    modes = WORLDS[a.world].speed_modes or WORLDS[a.world].speed_range()
    split = WORLDS[a.world].speed_split()  # between the two modes (geometric mean)

    def summary(speeds):
        s = np.asarray(speeds)
        return {"vehicles": int(s.size), "slow (< %.2f px/frame)" % split: int((s < split).sum()),
                "fast": int((s >= split).sum()), "mean": float(s.mean()),
                "quantiles 10/50/90": [float(q) for q in np.quantile(s, [0.1, 0.5, 0.9])]}

    result = {"model": a.model, "world": a.world, "pairs": len(bset.pairs),
              "direction_consistency": float(np.mean(consistency)),
              "speed_modes": list(modes), "generated": summary(made), "true": summary(true),
              "generated_speeds": made}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "forward_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "generated_speeds"}, indent=1))


if __name__ == "__main__":
    main()
