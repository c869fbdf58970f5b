"""The recipe study: quality against the number of UNet predictions, on held-out toy pairs with
ground truth, over steps, re-injection count and fraction, and samplers.

    python benchmarks/recipes.py --out runs/recipes                 # the whole study, resumable
    python benchmarks/recipes.py --out runs/recipes --pairs 8 --seeds 0 --settings toy   # a look
    python benchmarks/recipes.py --out runs/recipes --report     # the table of what has run

Settings (where the two directions may disagree, which re-injection is meant to reconcile):
``toy`` (today's world, 8 frames), ``far`` (today's world with 12 frames: longer gaps between the
keyframes, the model's 8-frame training stretched), ``ambiguous`` (the world where each vehicle
is slow or fast; the bundled ``toy-ambiguous`` model unless ``--ambiguous-model``). Each
(setting, recipe, seed) is one ``inbetween evaluate`` of ``gi`` on the setting's pairs, so it
resumes where it stopped.

Writes OUT/study.json (every run's metrics, predictions and seconds per video), OUT/study.md (the
table: mean over seeds and the seed-to-seed spread) and OUT/pareto.png (trajectory error and
direction consistency against predictions per video).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inbetweening.evaluation import evaluate, make_toy_set
from inbetweening.evaluation.report import mean_and_spread
from inbetweening.options import SamplingOptions
from inbetweening.sampling import predictions

METRICS = ("trajectory_error", "direction_consistency", "blended", "psnr", "ssim",
           "endpoint_psnr")
SETTINGS = {"toy": dict(world_name="toy", frames=None), "far": dict(world_name="toy", frames=12),
            "ambiguous": dict(world_name="ambiguous", frames=None)}


def _name(sampler: str, steps: int, count: int, fraction: float, at: str) -> str:
    if (sampler, steps, count, fraction, at) == ("euler", 50, 5, 0.5, "first"):
        return "paper"
    name = f"{sampler}-{steps}-{count}x{fraction}"
    return name if at == "first" or count == 0 else f"{name}-{at}"


def grid(full: bool = False) -> dict[str, dict]:
    """Recipe name -> sampling options. The core grid: the paper recipe (175 predictions),
    candidates for ``balanced`` (Euler 12 steps with 2 re-injections on half the steps, the same
    on every other step, DPM-Solver++(2M) likewise: 24 predictions; Euler 16 steps with 2 on
    every other step: 32) and for ``fast`` (Euler and DPM++(2M), 8 steps, no re-injection: 8;
    Euler 7 steps with 1 on every other step, Euler and DPM++(2M) 10 steps: 10; Heun 5 steps:
    9). ``full`` adds steps 8-50 x count 0-5 x fraction 0.25-0.75 x placement, and Heun."""
    points = [("euler", 50, 5, 0.5, "first"), ("euler", 12, 2, 0.5, "first"),
              ("euler", 12, 2, 0.5, "alternate"), ("dpmpp-2m", 12, 2, 0.5, "first"),
              ("euler", 8, 0, 0.5, "first"), ("dpmpp-2m", 8, 0, 0.5, "first"),
              # added after the first six had run (re-injection helped on the ambiguous world):
              ("euler", 16, 2, 0.5, "alternate"), ("euler", 7, 1, 0.5, "alternate"),
              # and the other ways to spend at most 1/16 of the paper's 175 predictions:
              ("euler", 10, 0, 0.5, "first"), ("dpmpp-2m", 10, 0, 0.5, "first"),
              ("heun", 5, 0, 0.5, "first")]
    if full:
        points += [("euler", s, c, f, "first") for s in (8, 12, 16, 25, 50) for c in (0, 1, 2, 5)
                   for f in ((0.5,) if c == 0 else (0.25, 0.5, 0.75))]
        points += [("euler", s, c, 0.5, at) for s in (12, 25) for c in (2, 5)
                   for at in ("middle", "alternate")]
        points += [("heun", s, c, 0.5, "first") for s in (5, 8, 12) for c in (0, 1)]
        points += [("dpmpp-2m", s, c, 0.5, "first") for s in (8, 12, 25) for c in (0, 2)]
    return {_name(*p): dict(sampler=p[0], steps=p[1], reinject=p[2], reinject_fraction=p[3],
                            reinject_at=p[4]) for p in points}


def cost(options: dict) -> int:
    return predictions(options["sampler"], options["steps"], options["reinject"],
                       options["reinject_fraction"], reinject_at=options["reinject_at"])


def run(out: Path, setting: str, model: str | None, recipe: str, options: dict, seed: int,
        pairs: int) -> dict:
    held_out = out / "sets" / setting
    if not (held_out / "manifest.json").is_file():
        make_toy_set(held_out, pairs, **SETTINGS[setting])
    result = evaluate(held_out, "gi", out / "runs" / setting / recipe / f"seed-{seed}",
                      model=str(model) if model else None, device="cpu", seed=seed,
                      options=SamplingOptions(**options), quiet=True)
    return result["methods"]["gi"]


def row(setting: str, recipe: str, options: dict, seed: int, scores: dict) -> dict:
    return {"setting": setting, "recipe": recipe, "seed": seed, "predictions": cost(options),
            **options, **{m: scores.get(m) for m in METRICS + ("seconds",)}}


def finished(out: Path) -> list[dict]:
    """The rows of every finished run under ``out`` (OUT/runs/SETTING/RECIPE/seed-N with its
    metrics.json), whichever command ran it."""
    recipes = grid(full=True)
    rows = []
    for metrics in sorted((out / "runs").glob("*/*/seed-*/metrics.json")):
        setting, recipe, seed = metrics.parts[-4], metrics.parts[-3], metrics.parts[-2]
        if recipe in recipes:
            scores = json.loads(metrics.read_text())["methods"]["gi"]
            rows.append(row(setting, recipe, recipes[recipe], int(seed.split("-")[1]), scores))
    return rows


def write(out: Path, rows: list[dict]) -> None:
    table = summarise(rows)
    (out / "study.json").write_text(json.dumps({"runs": rows, "table": table}, indent=1))
    (out / "study.md").write_text(markdown(table))


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["recipe"]), []).append(r)
    table = []
    for (setting, recipe), runs in sorted(groups.items()):
        table.append({"setting": setting, "recipe": recipe, "seeds": len(runs),
                      "predictions": runs[0]["predictions"],
                      **mean_and_spread(runs, METRICS + ("seconds",))})
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| setting | recipe | predictions | trajectory error (px) | direction consistency "
             "| blended | PSNR | endpoint PSNR |", "|---|---|---|---|---|---|---|---|"]
    for e in sorted(table, key=lambda e: (e["setting"], e["predictions"])):
        cells = [f"{e[m]:.3f} (±{e[m + '_spread'] / 2:.3f})" if m in e else "-"
                 for m in ("trajectory_error", "direction_consistency", "blended", "psnr",
                           "endpoint_psnr")]
        lines.append(f"| {e['setting']} | {e['recipe']} | {e['predictions']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean over sampling seeds (± half the seed-to-seed spread)\n"


def pareto(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "trajectory_error", "trajectory error (px), lower is "
                               "better"), (axes[1], "direction_consistency",
                                           "direction consistency, higher is better")):
        for setting in sorted({e["setting"] for e in table}):
            pts = sorted((e["predictions"], e[metric], e[metric + "_spread"] / 2)
                         for e in table if e["setting"] == setting and metric in e)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        fmt="o", ms=3, alpha=0.8, label=setting)
        ax.set_xscale("log")
        ax.set_xlabel("UNet predictions per video (fused)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument("--settings", default="ambiguous,far", help="from toy, far, ambiguous")
    p.add_argument("--ambiguous-model", default="toy-ambiguous",
                   help="the ambiguous world's model (default: the bundled one)")
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipes", default=None, help="comma-separated names (default: the grid)")
    p.add_argument("--full", action="store_true", help="the full grid (about 4x the core's cost)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", action="store_true",
                   help="run nothing: the table and chart of every finished run under OUT")
    a = p.parse_args(argv)
    if a.report:
        rows = finished(a.out)
        write(a.out, rows)
        pareto(summarise(rows), a.out / "pareto.png")
        print((a.out / "study.md").read_text())
        return
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    recipes = grid(a.full)
    if a.recipes:
        recipes = {k: recipes[k] for k in a.recipes.split(",")}
    rows = []
    for setting in a.settings.split(","):
        model = a.ambiguous_model if setting == "ambiguous" else None
        for name, options in sorted(recipes.items(), key=lambda kv: cost(kv[1])):
            for seed in (int(s) for s in a.seeds.split(",")):
                scores = run(a.out, setting, model, name, options, seed, a.pairs)
                rows.append(row(setting, name, options, seed, scores))
                write(a.out, rows)
                print(f"{setting} {name} seed {seed}: {cost(options)} predictions, trajectory "
                      f"error {scores.get('trajectory_error', float('nan')):.3f}", flush=True)
    pareto(summarise(rows), a.out / "pareto.png")
    print((a.out / "study.md").read_text())


if __name__ == "__main__":
    main()
