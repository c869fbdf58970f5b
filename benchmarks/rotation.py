"""The paper's rotation ablation (its Table 1, "w/o RA"), on ground truth: backward weights trained
with the forward model's rotated attention maps (``rotation``, the paper) and without them
(``no-rotation``: q, k, v, o trained, no maps), at several training-set sizes and two training
seeds, on the ambiguous toy world (each vehicle slow or fast) and, at the paper's 100 clips, on
today's toy world. Each backward model is evaluated with ``gi`` on held-out pairs of its world
with the tracker and the blending measure.

    python benchmarks/rotation.py --out runs/rotation \\
        --ambiguous-model runs/ambiguous        # the ambiguous world's forward model
    python benchmarks/rotation.py --out runs/rotation --steps 500 --pairs 12   # a cheaper grid

Every cell is written as it is done (training checkpoints, evaluation records), so running the
same command again continues where it stopped. The table goes to OUT/table.md and
OUT/results.json: per world, size and variant the mean over seeds and the spread (max - min).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from inbetweening.backward import WEIGHTS_FILENAME
from inbetweening.commands.toy_train import TRAIN_SEED, BackwardConfig, write_clips
from inbetweening.evaluation import evaluate, make_toy_set
from inbetweening.evaluation.report import mean_and_spread
from inbetweening.toy.models import BUNDLED_MODEL
from inbetweening.toy.world import WORLDS
from inbetweening.train_config import TrainConfig
from inbetweening.training import train

VARIANTS = ("rotation", "no-rotation")
METRICS = ("trajectory_error", "direction_consistency", "blended", "psnr", "endpoint_psnr")


def cells(sizes: list[int], seeds: list[int], toy_size: int) -> list[tuple[str, int, int, str]]:
    """(world, clips, seed, variant) of the grid."""
    grid = [("ambiguous", n, s, v) for n in sizes for s in seeds for v in VARIANTS]
    return grid + [("toy", toy_size, s, v) for s in seeds for v in VARIANTS]


def cell_name(world: str, clips: int, seed: int, variant: str) -> str:
    return f"{world}/clips-{clips}/seed-{seed}/{variant}"


def training_clips(out: Path, world: str, clips: int, seed: int) -> Path:
    """The clips of a (world, size, seed): a different draw of the training stream per seed."""
    return write_clips(out / "data" / world / f"clips-{clips}-seed-{seed}", clips, WORLDS[world],
                       seed=TRAIN_SEED + 7 + 1000 * seed)


def train_cell(out: Path, model: Path, world: str, clips: int, seed: int, variant: str,
               cfg: BackwardConfig) -> Path:
    """Backward weights of one cell, trained as the bundled toy model's were (resumable)."""
    folder = out / "weights" / cell_name(world, clips, seed, variant)
    done = folder / WEIGHTS_FILENAME
    if done.is_file():
        return done
    geometry = WORLDS[world]
    result = train(TrainConfig(
        data=str(training_clips(out, world, clips, seed)), output=str(folder / "run"),
        model=str(model), variant=variant, frames=geometry.frames, stride=1,
        size=(geometry.size, geometry.size), steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr,
        p_mean=cfg.p_mean, p_std=cfg.p_std, cond_aug=cfg.cond_aug, clips=cfg.windows,
        checkpoint_every=cfg.checkpoint_every, sample_every=0, device="cpu", seed=seed,
        resume="latest", progress=True))
    shutil.copyfile(result, done)
    return done


def evaluate_cell(out: Path, model: Path, weights: Path, world: str, name: str,
                  pairs: int) -> dict:
    held_out = out / "sets" / world
    if not (held_out / "manifest.json").is_file():
        make_toy_set(held_out, pairs, world_name=world)
    result = evaluate(held_out, "gi", out / "results" / name, model=str(model),
                      backward=str(weights), device="cpu", quiet=True)
    return result["methods"]["gi"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread (max - min) over seeds, per world, size and variant."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["world"], r["clips"], r["variant"]), []).append(r)
    table = []
    for (world, clips, variant), runs in sorted(groups.items()):
        table.append({"world": world, "clips": clips, "variant": variant, "seeds": len(runs),
                      **mean_and_spread(runs, METRICS)})
    return table


def markdown(table: list[dict]) -> str:
    head = ("| world | clips | variant | trajectory error (px) | direction consistency | "
            "blended vehicle-frames | PSNR | endpoint PSNR |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for e in table:
        cells_ = [f"{e[m]:.3f} ± {e[m + '_spread'] / 2:.3f}" if m in e else "-" for m in METRICS]
        lines.append(f"| {e['world']} | {e['clips']} | {e['variant']} | " + " | ".join(cells_)
                     + " |")
    return head + "\n".join(lines) + ("\n\nmean over training seeds ± half their spread "
                                      "(max - min)/2\n")


def contact(out: Path, world: str, clips: int, seed: int, path: Path) -> str | None:
    """A contact sheet (true clip, rotation, no-rotation) of the held-out pair of ``world``
    where the two variants' videos differ most in trajectory error plus blended frames (both
    cells at ``clips`` and ``seed``). Returns the pair's id."""
    import numpy as np
    import PIL.Image

    from inbetweening.demo import contact_sheet
    from inbetweening.evaluation.results import load_npz, load_record, video_path
    from inbetweening.evaluation.sets import load_set

    folders = {v: out / "results" / cell_name(world, clips, seed, v) for v in VARIANTS}
    bset = load_set(out / "sets" / world)

    def gap(pair) -> float:
        r = [load_record(folders[v], "gi", pair.id) for v in VARIANTS]
        return abs(r[0]["trajectory_error"] - r[1]["trajectory_error"]) + 8 * abs(
            r[0]["blended"] - r[1]["blended"])

    try:
        pair = max(bset.pairs, key=gap)
    except OSError:
        return None
    rows = {"true": pair.true_clip() / 255.0}
    rows.update({v: load_npz(video_path(folders[v], "gi", pair.id)) / 255.0 for v in VARIANTS})
    sheet = contact_sheet([{k: np.asarray(v, np.float32) for k, v in rows.items()}])
    PIL.Image.fromarray(sheet).save(path)
    return pair.id


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/rotation"))
    p.add_argument("--ambiguous-model", type=Path, default=Path("runs/ambiguous"),
                   help="forward model of the ambiguous world (commands/toy_train --world "
                        "ambiguous)")
    p.add_argument("--toy-model", type=Path, default=BUNDLED_MODEL,
                   help="forward model of today's world (default: the bundled toy model)")
    p.add_argument("--sizes", default="25,100,400", help="training clips, ambiguous world")
    p.add_argument("--toy-size", type=int, default=100, help="training clips, today's world")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=BackwardConfig.steps)
    p.add_argument("--pairs", type=int, default=24, help="held-out pairs per world")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    cfg = replace(BackwardConfig(), steps=a.steps)
    models = {"ambiguous": a.ambiguous_model, "toy": a.toy_model}
    rows = []
    grid = cells([int(v) for v in a.sizes.split(",")], [int(v) for v in a.seeds.split(",")],
                 a.toy_size)
    for i, (world, clips, seed, variant) in enumerate(grid):
        name = cell_name(world, clips, seed, variant)
        print(f"[{i + 1}/{len(grid)}] {name}", flush=True)
        weights = train_cell(a.out, models[world], world, clips, seed, variant, cfg)
        scores = evaluate_cell(a.out, models[world], weights, world, name, a.pairs)
        rows.append({"world": world, "clips": clips, "seed": seed, "variant": variant,
                     **{m: scores[m] for m in METRICS if m in scores}})
        table = summarise(rows)
        (a.out / "results.json").write_text(json.dumps({"cells": rows, "table": table},
                                                       indent=1))
        (a.out / "table.md").write_text(markdown(table))
    biggest = max(int(v) for v in a.sizes.split(","))
    shown = contact(a.out, "ambiguous", biggest, int(a.seeds.split(",")[0]),
                    a.out / "contact_sheet.png")
    if shown:
        print(f"contact sheet of pair {shown}: {a.out / 'contact_sheet.png'}")
    print((a.out / "table.md").read_text())


if __name__ == "__main__":
    main()
