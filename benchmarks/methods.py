"""The method tables: every method on held-out pairs of the toy world (bundled model ``toy``) and
of the ambiguous world (``toy-ambiguous``), three sampling seeds each, at each method's own
settings and, for the diffusion methods, at an equal budget of predictions per video.

    python benchmarks/methods.py --out runs/methods                     # everything, resumable
    python benchmarks/methods.py --out runs/methods --share 1/2 &       # two processes share it
    python benchmarks/methods.py --out runs/methods --share 2/2 &
    python benchmarks/methods.py --out runs/methods --claim &           # or: each takes the next
    python benchmarks/methods.py --out runs/methods --claim &           # job no one holds
    python benchmarks/methods.py --out runs/methods --report            # tables of what has run
    python benchmarks/methods.py --out runs/methods --report --publish  # ... into the repository

Each (world, arm, method, seed) is one ``inbetween evaluate`` of one method on the world's pairs
(OUT/runs/WORLD/ARM/METHOD/seed-N), so an interrupted run continues where it stopped and every
pair has its own sampling seed, derived from the seed and the pair's id: the methods see the same
seeds on the same pairs, which makes the comparisons paired. Arms: ``own`` (every method with no
options: its own published settings over the model's recommendation, see
:mod:`inbetweening.methods`) and ``equal`` (every diffusion method at the settings of its own kind
that cost ``--budget`` predictions per video, :func:`equal_budget`).

The report writes OUT/methods.md and OUT/methods.json: per world, arm and method the mean over
the seeds of each seed's mean over pairs, with half the range of those per-seed means; and the
paired comparisons of ``gi`` with every other method (per pair the mean over seeds, the mean
difference, its bootstrap 95 % interval over pairs, the pairs each side wins:
:func:`inbetweening.evaluation.report.paired_comparison`). ``--publish`` writes them to
benchmarks/results/methods.{md,json} and the charts to docs/WORLD-eval-{bars,per-frame}.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from inbetweening.evaluation import ALL_METHODS, evaluate, load_set, make_toy_set
from inbetweening.evaluation.report import METRICS as COLUMNS
from inbetweening.evaluation.report import mean_and_spread, paired_comparison, write_plots
from inbetweening.methods import METHODS as DIFFUSION_METHODS
from inbetweening.methods import method
from inbetweening.options import SamplingOptions
from inbetweening.peers import trf_jump_steps
from inbetweening.runners import predictions_per_video
from inbetweening.sampling import reinject_steps
from inbetweening.utils import process_alive

ROOT = Path(__file__).resolve().parents[1]
WORLDS = {"toy": "toy", "ambiguous": "toy-ambiguous"}  # world -> its bundled model
ARMS = ("own", "equal")
METRICS = ("trajectory_error", "direction_consistency", "blended", "psnr", "ssim",
           "endpoint_psnr", "predictions")
PAIRED = ("trajectory_error", "direction_consistency", "blended")  # the paired comparisons' metrics
BUDGET = 24
EQUAL_RECIPE = "balanced"  # the tunable methods' recipe of 24 predictions


def planned_settings(pipe, bset, name: str, options: SamplingOptions) -> tuple[dict, int]:
    """The settings a call of ``name`` with ``options`` on the set runs with (as ``evaluate``
    resolves them) and its predictions per video."""
    from inbetweening.evaluation import sampling_call

    settings, _ = pipe.call_settings(**sampling_call(options, name, bset, pipe))
    return settings, predictions_per_video(method(name), settings)


def equal_budget(pipe, bset, name: str, budget: int = BUDGET) -> tuple[SamplingOptions, int]:
    """The options of method ``name``'s own kind that cost ``budget`` predictions per video (or
    the step count whose cost is nearest, fewer steps on a tie): a tunable method (GI's sampler)
    takes the recipe of that cost, the others a step count. Returns the options and their
    predictions per video, counted with :func:`inbetweening.runners.predictions_per_video`."""
    if method(name).tunable:
        options = SamplingOptions(recipe=EQUAL_RECIPE)
        cost = planned_settings(pipe, bset, name, options)[1]
        if cost != budget:
            raise SystemExit(f"the recipe {EQUAL_RECIPE!r} costs {cost} predictions for {name}, "
                             f"not {budget}")
        return options, cost
    costs = {steps: planned_settings(pipe, bset, name, SamplingOptions(steps=steps))[1]
             for steps in range(1, 2 * budget + 1)}
    steps = min(costs, key=lambda s: (abs(costs[s] - budget), s))
    return SamplingOptions(steps=steps), costs[steps]


def plan(out: Path, pairs: int) -> dict:
    """Make each world's set (if absent) and write OUT/plan.json: per world, arm and method the
    options and the settings it runs with and their predictions per video."""
    from inbetweening.loading import load_pipeline

    path = out / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    result: dict = {}
    for world, model in WORLDS.items():
        held_out = out / "sets" / world
        if not (held_out / "manifest.json").is_file():
            make_toy_set(held_out, pairs, world_name=world)
        bset, pipe = load_set(held_out), load_pipeline(model, device="cpu", quiet=True)
        arms = {"own": {m: SamplingOptions() for m in DIFFUSION_METHODS},
                "equal": {m: equal_budget(pipe, bset, m)[0] for m in DIFFUSION_METHODS}}
        result[world] = {arm: {} for arm in ARMS}
        for arm, chosen in arms.items():
            for name, options in chosen.items():
                settings, cost = planned_settings(pipe, bset, name, options)
                result[world][arm][name] = {"options": given(options), "predictions": cost,
                                            "settings": summary(name, settings)}
        for name in ALL_METHODS:
            if name not in DIFFUSION_METHODS:
                result[world]["own"][name] = {"options": {}, "predictions": 0, "settings": {}}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def given(options: SamplingOptions) -> dict:
    return {k: v for k, v in vars(options).items() if v is not None and k != "method"}


def summary(name: str, s: dict) -> dict:
    """The settings that decide a method's cost and schedule (for the table)."""
    keys = ["num_inference_steps"]
    kind = method(name).kind
    if kind == "recurrence":
        keys += ["sampler", "reinject_count", "reinject_fraction", "reinject_at"]
    elif kind == "trf":
        keys += ["renoise_scale"]
    return {k: s[k] for k in keys}


def jobs(plan_: dict, seeds: list[int]) -> list[tuple[str, str, str, int]]:
    """(world, arm, method, seed), seed-major so that a part-finished run covers every method."""
    return [(w, arm, m, s) for s in seeds for w in plan_ for arm in ARMS for m in plan_[w][arm]]


def run_folder(out: Path, world: str, arm: str, name: str, seed: int) -> Path:
    return out / "runs" / world / arm / name / f"seed-{seed}"


def claim(folder: Path) -> bool:
    """Take the job of ``folder`` for this process: True if no living process holds it (a claim
    file beside the folder names its holder's pid; a dead holder's claim is taken over)."""
    path = folder.parent / f"{folder.name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text() or 0)  # 0: its holder is writing its pid
            except ValueError:
                holder = None
            if holder is None or (holder and not process_alive(holder)):
                path.unlink(missing_ok=True)  # its holder died: take it over
                continue
            return holder == os.getpid()
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def run_job(out: Path, plan_: dict, world: str, arm: str, name: str, seed: int,
            claimed: bool = False) -> bool:
    """Run one job unless it has run (or, ``claimed``, another process holds it); True if run."""
    folder = run_folder(out, world, arm, name, seed)
    if (folder / "metrics.json").is_file() or (claimed and not claim(folder)):
        return False
    t0 = time.time()
    options = SamplingOptions(**plan_[world][arm][name]["options"])
    result = evaluate(out / "sets" / world, name, folder, model=WORLDS[world], device="cpu",
                      seed=seed, options=options, quiet=True)
    scores = result["methods"][name]
    print(f"{world} {arm} {name} seed {seed}: {scores.get('predictions', 0):.0f} predictions, "
          f"trajectory error {scores['trajectory_error']:.3f}, {time.time() - t0:.0f} s",
          flush=True)
    return True


# -- the report ----------------------------------------------------------------------------------
def finished(out: Path, plan_: dict) -> dict:
    """(world, arm, method) -> {seed: metrics.json} of the finished runs."""
    runs: dict = {}
    for world, arm, name, seed in jobs(plan_, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]):
        metrics = run_folder(out, world, arm, name, seed) / "metrics.json"
        if metrics.is_file():
            runs.setdefault((world, arm, name), {})[seed] = json.loads(metrics.read_text())
    return runs


def per_pair(result: dict, name: str, metric: str) -> dict[str, float]:
    return {r["pair"]: r[metric] for r in result["pairs"] if r["method"] == name}


def row(plan_: dict, world: str, arm: str, name: str, by_seed: dict) -> dict:
    means = [by_seed[s]["methods"][name] for s in sorted(by_seed)]
    counts = {r["predictions"] for s in by_seed for r in by_seed[s]["pairs"]}
    planned = plan_[world][arm][name]["predictions"]
    if counts != {planned}:
        raise SystemExit(f"{world} {arm} {name}: predictions per video {sorted(counts)}, the plan "
                         f"says {planned}")
    return {"world": world, "arm": arm, "method": name, "seeds": sorted(by_seed),
            "settings": plan_[world][arm][name]["settings"],
            **mean_and_spread(means, METRICS)}


def comparisons(runs: dict, world: str, arm: str, reference: str = "gi") -> list[dict]:
    """``reference`` against every other method of (world, arm), paired over pairs: each pair's
    value is its mean over the seeds both have."""
    if (world, arm, reference) not in runs:
        return []
    ref = runs[(world, arm, reference)]
    rows = []
    order = list(ALL_METHODS)
    others = sorted((name for (w, a, name) in runs if (w, a) == (world, arm) and name != reference),
                    key=lambda name: (name != "gi-sequential", order.index(name)))
    for name in others:
        other = runs[(world, arm, name)]
        seeds = sorted(set(ref) & set(other))
        if not seeds:
            continue
        entry = {"world": world, "arm": arm, "a": reference, "b": name, "seeds": seeds}
        for metric in PAIRED:
            xs = [per_pair(ref[s], reference, metric) for s in seeds]
            ys = [per_pair(other[s], name, metric) for s in seeds]
            ids = sorted(xs[0])
            entry[metric] = paired_comparison(
                [np.mean([x[i] for x in xs]) for i in ids],
                [np.mean([y[i] for y in ys]) for i in ids], higher_is_better=COLUMNS[metric][1])
        rows.append(entry)
    return rows


def report(out: Path, plan_: dict) -> dict:
    runs = finished(out, plan_)
    rows = [row(plan_, w, a, m, runs[(w, a, m)]) for w in plan_ for a in ARMS
            for m in plan_[w][a] if (w, a, m) in runs]
    paired = [c for w in plan_ for a in ARMS for c in comparisons(runs, w, a)]
    return {"spread": "half the range (max - min) of the per-seed means over pairs",
            "budget": BUDGET, "plan": plan_, "table": rows, "paired": paired}


def cell(e: dict, metric: str) -> str:
    if metric not in e:
        return "-"
    d = COLUMNS[metric][2]
    if metric == "predictions":
        return f"{e[metric]:.0f}"
    return f"{e[metric]:.{d}f} ± {e[metric + '_spread'] / 2:.{d}f}"


def settings_text(s: dict) -> str:
    text = f"{s['num_inference_steps']} steps"
    if s.get("reinject_count"):
        r = reinject_steps(s["num_inference_steps"], s["reinject_fraction"])
        where = {"first": f"the first {r}", "middle": f"the middle {r}",
                 "alternate": f"{r} alternate"}[s["reinject_at"]]
        text += f", {s['reinject_count']} re-injections on {where} steps"
    if s.get("sampler", "euler") != "euler":
        text += f", {s['sampler']}"
    if "renoise_scale" in s:  # TRF's kind: its rule's jumps back at this step count
        jumps = len(trf_jump_steps(s["num_inference_steps"]))
        text += f", {jumps or 'no'} jump{'s' * (jumps != 1)} back, re-noise {s['renoise_scale']:g}"
    return text


def table_md(rows: list[dict]) -> list[str]:
    head = ["method", "settings", "seeds"] + [
        f"{COLUMNS[m][0]} {'↑' if COLUMNS[m][1] else '↓'}" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in rows:
        lines.append(f"| `{e['method']}` | {settings_text(e['settings']) if e['settings'] else '-'}"
                     f" | {len(e['seeds'])} | " + " | ".join(cell(e, m) for m in METRICS) + " |")
    return lines


def paired_md(entries: list[dict]) -> list[str]:
    head = ["`gi` vs", "pairs"] + [f"{COLUMNS[m][0]}: gi - other [95 % CI], pairs gi / other won"
                                   for m in PAIRED]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = []
        for m in PAIRED:
            c, d = e[m], COLUMNS[m][2]
            cells.append(f"{c['mean_difference']:+.{d}f} [{c['ci_low']:+.{d}f}, "
                         f"{c['ci_high']:+.{d}f}], {c['a_better']} / {c['b_better']}")
        lines.append(f"| `{e['b']}` | {e[PAIRED[0]]['pairs']} | " + " | ".join(cells) + " |")
    return lines


def trf_note(budget: int) -> str:
    """Whether TRF's jump rule can jump within ``budget`` predictions."""
    steps = next(n for n in range(1, 1000) if trf_jump_steps(n))
    cost = predictions_per_video(method("trf"), {"num_inference_steps": steps})
    return (f"`trf` at an equal budget: TRF's rule jumps back only from {steps} steps on "
            f"({cost} predictions), so at {budget} predictions it runs {budget} plain fused "
            "Euler steps (no jump)." if cost > budget else "")


def markdown(result: dict) -> str:
    lines = ["Every method on held-out pairs of each toy world, one `inbetween evaluate` per "
             "(world, arm, method, sampling seed). Cells: mean over the seeds of each seed's mean "
             "over pairs ± half the range of those per-seed means. `own`: each method at its own "
             f"settings; `equal`: each diffusion method at {result['budget']} predictions per "
             "video (settings of its own kind). Paired: per pair the mean over seeds; difference "
             "gi - other, its percentile bootstrap 95 % interval over pairs (10,000 resamples, "
             "seed 0), and the pairs on which each is better (ties: neither).", "",
             trf_note(result["budget"]), ""]
    for world in result["plan"]:
        for arm in ARMS:
            rows = [e for e in result["table"] if (e["world"], e["arm"]) == (world, arm)]
            paired = [e for e in result["paired"] if (e["world"], e["arm"]) == (world, arm)]
            if rows:
                lines += [f"## {world}, {arm} settings", ""] + table_md(rows) + [""]
            if paired:
                lines += [f"Paired, {world}, {arm} settings:", ""] + paired_md(paired) + [""]
    return "\n".join(lines)


def bars(result: dict, world: str, path: Path) -> None:
    """Per method (own settings) the mean and half the seed range of the tracker's metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [e for e in result["table"] if (e["world"], e["arm"]) == (world, "own")]
    shown = [m for m in METRICS if m != "predictions"]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.2))
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes, shown):
        ax.bar(range(len(rows)), [e[m] for e in rows], yerr=[e[m + "_spread"] / 2 for e in rows],
               color=[colors(i % 10) for i in range(len(rows))], capsize=2)
        ax.set_xticks(range(len(rows)), [e["method"] for e in rows], rotation=45, ha="right",
                      fontsize=8)
        ax.set_title(f"{COLUMNS[m][0]} {'↑' if COLUMNS[m][1] else '↓'}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    seeds = max(len(e["seeds"]) for e in rows)
    fig.suptitle(f"{world} world, own settings: mean over {seeds} sampling seeds ± half their "
                 "range", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_frame(out: Path, result: dict, world: str, path: Path) -> None:
    """The per-frame curves of ``evaluate``'s plots over every (seed, pair) of the own arm."""
    runs = finished(out, result["plan"])
    rows = [e for e in result["table"] if (e["world"], e["arm"]) == (world, "own")]
    names = [e["method"] for e in rows]
    merged = {"methods": {e["method"]: {m: e[m] for m in METRICS} for e in rows},
              "pairs": [r for m in names for res in runs[(world, "own", m)].values()
                        for r in res["pairs"]]}
    folder = out / "plots" / world
    folder.mkdir(parents=True, exist_ok=True)
    write_plots(merged, folder)
    shutil.copyfile(folder / "per_frame.png", path)


def write_report(out: Path, plan_: dict, publish: bool) -> None:
    result = report(out, plan_)
    (out / "methods.json").write_text(json.dumps(result, indent=1))
    (out / "methods.md").write_text(markdown(result))
    print((out / "methods.md").read_text())
    if publish:
        shutil.copyfile(out / "methods.json", ROOT / "benchmarks/results/methods.json")
        shutil.copyfile(out / "methods.md", ROOT / "benchmarks/results/methods.md")
        for world in plan_:
            bars(result, world, ROOT / f"docs/{world}-eval-bars.png")
            per_frame(out, result, world, ROOT / f"docs/{world}-eval-per-frame.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/methods"))
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--share", default="1/1", help="I/N: run the I-th of N shares of the jobs")
    p.add_argument("--claim", action="store_true", help="take the jobs in order, each one that "
                   "no other living process has claimed (processes can join at any time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="run nothing: tabulate what has run")
    p.add_argument("--publish", action="store_true", help="with --report: write the tables to "
                   "benchmarks/results/methods.{md,json} and the charts to docs/")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    plan_ = plan(a.out, a.pairs)
    if a.report:
        write_report(a.out, plan_, a.publish)
        return
    i, n = (int(v) for v in a.share.split("/"))
    todo = jobs(plan_, [int(s) for s in a.seeds.split(",")])[i - 1::n]
    ran = sum(run_job(a.out, plan_, *job, claimed=a.claim) for job in todo)
    print(f"share {i}/{n}: {ran} of {len(todo)} runs done here", flush=True)


if __name__ == "__main__":
    main()
