"""The rotation ablation's report (benchmarks/rotation.py): from what OUT holds so far, the
tables (mean and spread per world, re-injection setting and arm; paired comparisons between
arms; the two directions' agreement), the held-out loss curves and a contact sheet.

Everything is recomputed from the records each time, so it can run while the grid is still
running (it reports the runs that are finished, pairing arms only over the runs both have).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inbetweening.evaluation.report import paired_comparison
from inbetweening.evaluation.results import load_record

ARMS = ("rotation", "no-rotation", "no-rotation-vo")
# (arm a, arm b): the differences a - b reported
COMPARISONS = (("rotation", "no-rotation"), ("rotation", "no-rotation-vo"),
               ("no-rotation-vo", "no-rotation"))
# metric -> (title, higher is better, decimals)
METRICS = {"trajectory_error": ("trajectory error (px)", False, 2),
           "direction_consistency": ("direction consistency", True, 3),
           "blended": ("blended", False, 3), "psnr": ("PSNR", True, 2),
           "endpoint_psnr": ("endpoint PSNR", True, 2)}
PAIRED = ("trajectory_error", "direction_consistency", "blended", "psnr")
# mechanism measure -> (title, higher is better)
AGREEMENT = {"speed_agree": ("speed class agrees", True),
             "speed_kappa": ("speed kappa", True),
             "forward_fast": ("fwd fast", None), "backward_fast": ("bwd fast", None),
             "middle_agree": ("middle within 4 px", True),
             "middle_distance": ("middle distance (px)", False),
             "forward_speed_true": ("fwd speed = truth", True),
             "backward_speed_true": ("bwd speed = truth", True),
             "backward_middle_true": ("bwd middle within 4 px of truth", True),
             "unread": ("speed unread", False)}
BOOTSTRAP = dict(resamples=10_000, seed=0)


# -- gathering ------------------------------------------------------------------------------------

def run_records(folder: Path, pairs: list[str]) -> dict[str, dict] | None:
    """A finished evaluation run's record per pair (None while the run is not finished)."""
    if not (folder / "metrics.json").is_file():
        return None
    return {p: load_record(folder, "gi", p) for p in pairs}


def gather_runs(runs: dict[tuple, Path], pairs: dict[str, list[str]]) -> dict[tuple, dict]:
    """{(world, setting, arm, train seed, sampling seed): {pair: record}} of the finished runs
    among ``runs`` (the same keys, to their results folders)."""
    out = {}
    for key, folder in runs.items():
        records = run_records(folder, pairs[key[0]])
        if records is not None:
            out[key] = records
    return out


def summary_table(done: dict[tuple, dict]) -> list[dict]:
    """Per (world, setting, arm): each metric's mean over the runs (a run: the mean over its
    pairs) and their standard deviation over the runs (training x sampling seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for (world, setting, arm, _, _), records in sorted(done.items()):
        groups.setdefault((world, setting, arm), []).append(records)
    table = []
    for (world, setting, arm), runs in groups.items():
        row = {"world": world, "setting": setting, "arm": arm, "runs": len(runs)}
        for m in METRICS:
            means = [np.mean([r[m] for r in recs.values()]) for recs in runs
                     if all(m in r for r in recs.values())]
            if means:
                row[m], row[m + "_sd"] = float(np.mean(means)), float(np.std(means, ddof=0))
        table.append(row)
    return table


def per_pair(done: dict[tuple, dict], world: str, setting: str, arm: str, metric: str,
             seeds: set[tuple]) -> dict[str, float]:
    """Each pair's mean of ``metric`` over the runs of (world, setting, arm) with (training,
    sampling) seeds in ``seeds``."""
    runs = [recs for (w, s, a, ts, ss), recs in done.items()
            if (w, s, a) == (world, setting, arm) and (ts, ss) in seeds]
    return {p: float(np.mean([recs[p][metric] for recs in runs])) for p in runs[0]}


def paired_table(done: dict[tuple, dict]) -> tuple[list[dict], list[dict]]:
    """Paired comparisons of arms (per world and setting, over the runs both arms have) and
    every pair's means they rest on."""
    rows, pairs_out = [], []
    for world, setting in sorted({k[:2] for k in done}):
        seeds = {a: {k[3:] for k in done if k[:3] == (world, setting, a)} for a in ARMS}
        for a, b in COMPARISONS:
            both = seeds[a] & seeds[b]
            if not both:
                continue
            for m in PAIRED:
                va, vb = (per_pair(done, world, setting, arm, m, both) for arm in (a, b))
                ids = sorted(va)
                rows.append({"world": world, "setting": setting, "a": a, "b": b, "metric": m,
                             "runs": len(both), **paired_comparison(
                                 [va[p] for p in ids], [vb[p] for p in ids],
                                 higher_is_better=METRICS[m][1], **BOOTSTRAP)})
        for arm in ARMS:
            if seeds[arm]:
                pairs_out.append({"world": world, "setting": setting, "arm": arm, **{
                    m: per_pair(done, world, setting, arm, m, seeds[arm]) for m in PAIRED}})
    return rows, pairs_out


# -- the mechanism --------------------------------------------------------------------------------

def mechanism_tables(records: dict[tuple, list[dict]], splits: dict[str, float]
                     ) -> tuple[list[dict], list[dict]]:
    """From {(world, train seed, arm): the probe records of probe_model}: per (world, probe,
    arm) the agreement over all its records (and the spread of the two headline rates over
    training seeds); per (world, probe) paired comparisons of arms over pairs (per pair: the
    mean over vehicles, sampling and training seeds)."""
    from rotation_probe import agreement

    table, paired = [], []
    for world in sorted({k[0] for k in records}):
        probes = sorted({r["probe"] for k, rs in records.items() if k[0] == world for r in rs},
                        key=_noisiest_first)
        for probe in probes:
            def subset(arm, seed=None, pair=None):
                return [r for (w, s, a), rs in records.items() if (w, a) == (world, arm)
                        and seed in (None, s) for r in rs if r["probe"] == probe
                        and pair in (None, r["pair"])]
            for arm in ARMS:
                if not subset(arm):
                    continue
                row = {"world": world, "probe": probe, "arm": arm,
                       **agreement(subset(arm), splits[world])}
                per_seed = [agreement(subset(arm, s), splits[world]) for s in
                            sorted({k[1] for k in records if k[0] == world and k[2] == arm})]
                for m in ("speed_agree", "middle_agree"):
                    row[m + "_seeds"] = [p[m] for p in per_seed]
                table.append(row)
            paired += _mechanism_paired(world, probe, subset, splits[world])
    return table, paired


def _noisiest_first(probe: str) -> float:
    """Sort key of the probe names: ``noise`` first, then ``true+S`` by falling S."""
    return float("-inf") if probe == "noise" else -float(probe.split("+")[1])


def _mechanism_paired(world, probe, subset, split) -> list[dict]:
    from rotation_probe import agreement

    rows = []
    for a, b in COMPARISONS:
        if not (subset(a) and subset(b)):
            continue
        pairs = sorted({r["pair"] for r in subset(a)} & {r["pair"] for r in subset(b)})
        for m in ("speed_agree", "middle_distance"):
            va = [agreement(subset(a, pair=p), split)[m] for p in pairs]
            vb = [agreement(subset(b, pair=p), split)[m] for p in pairs]
            rows.append({"world": world, "probe": probe, "a": a, "b": b, "metric": m,
                         **paired_comparison(va, vb, higher_is_better=AGREEMENT[m][1],
                                             **BOOTSTRAP)})
    return rows


# -- the held-out loss ----------------------------------------------------------------------------

def loss_summary(curves: dict[tuple, dict]) -> list[dict]:
    """Per (world, arm): the held-out loss at each sigma at the first and last scored step and
    500 steps before the last (mean over training seeds), to show where training ended."""
    rows = []
    for world, arm in sorted({(w, a) for w, _, a in curves}):
        seeds = [c for (w, _, a), c in curves.items() if (w, a) == (world, arm)]
        last = min(max(c) for c in seeds)
        marks = {"start": 0, "before": max((s for s in seeds[0] if s <= last - 500), default=0),
                 "last": last}
        row = {"world": world, "arm": arm, "seeds": len(seeds), **{f"{k}_step": v
                                                                    for k, v in marks.items()}}
        for k, step in marks.items():
            row[k] = {sig: float(np.mean([c[step][sig] for c in seeds if step in c]))
                      for sig in seeds[0][0]}
        rows.append(row)
    return rows


def plot_losses(curves: dict[tuple, dict], path: Path) -> Path | None:
    """Held-out loss against training step: a row per world, a column per sigma, a line per
    arm (colour) and training seed (line style)."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({w for w, _, _ in curves})
    sigmas = list(next(iter(curves.values()))[0])
    fig, axes = plt.subplots(len(worlds), len(sigmas), figsize=(3.2 * len(sigmas),
                                                                 2.8 * len(worlds)),
                             squeeze=False)
    colors = dict(zip(ARMS, ("tab:red", "tab:blue", "tab:green")))
    for (world, seed, arm), curve in sorted(curves.items()):
        steps = sorted(curve)
        for j, sig in enumerate(sigmas):
            ax = axes[worlds.index(world), j]
            ax.plot(steps, [curve[s][sig] for s in steps], color=colors[arm],
                    linestyle=("-", "--", ":")[seed % 3], label=f"{arm}, seed {seed}")
            ax.set_title(f"{world}, sigma {sig}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out loss", fontsize=8)
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- markdown -------------------------------------------------------------------------------------

def _ci(r: dict, d: int) -> str:
    return (f"{r['mean_difference']:+.{d}f} [{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}] "
            f"({r['a_better']}:{r['b_better']})")


def markdown(result: dict) -> str:
    parts = [_md_table(result["table"]), _md_paired(result["paired"]),
             _md_mechanism(result["mechanism"]), _md_mechanism_paired(result["mechanism_paired"]),
             _md_loss(result["loss"])]
    return "\n".join(p for p in parts if p)


def _md_table(table: list[dict]) -> str:
    head = ("| world | re-injection | arm | runs | " + " | ".join(t for t, _, _ in
                                                              METRICS.values())
            + " |\n|" + "---|" * (4 + len(METRICS)) + "\n")
    lines = []
    for r in table:
        cells = [f"{r[m]:.{d}f} ± {r[m + '_sd']:.{d}f}" if m in r else "-"
                 for m, (_, _, d) in METRICS.items()]
        lines.append(f"| {r['world']} | {r['setting']} | `{r['arm']}` | {r['runs']} | "
                     + " | ".join(cells) + " |")
    return ("### Per arm\n\nmean over runs (training seeds x sampling seeds, the count in "
            "`runs`; a run: the mean over the held-out pairs) ± their standard deviation\n\n" + head + "\n".join(lines)
            + "\n")


def _md_paired(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = []
    keys = sorted({(r["world"], r["setting"], r["a"], r["b"]) for r in rows},
                  key=lambda k: (k[0], k[1], COMPARISONS.index(k[2:])))
    for key in keys:
        got = {r["metric"]: r for r in rows if (r["world"], r["setting"], r["a"], r["b"]) == key}
        cells = [_ci(got[m], METRICS[m][2] + 1) if m in got else "-" for m in PAIRED]
        lines.append(f"| {key[0]} | {key[1]} | `{key[2]}` - `{key[3]}` | "
                     + " | ".join(cells) + " |")
    head = ("| world | re-injection | a - b | " + " | ".join(METRICS[m][0] for m in PAIRED)
            + " |\n|" + "---|" * (3 + len(PAIRED)) + "\n")
    return ("\n### Paired differences between arms\n\nper pair the mean over seeds; the mean "
            "difference a - b over pairs, its bootstrap 95 % interval over pairs (10,000 draws, "
            "seed 0), and (pairs where a is better : pairs where b is better)\n\n" + head
            + "\n".join(lines) + "\n")


def _md_mechanism(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = ("| world | probe | arm | vehicles | " + " | ".join(t for t, _ in AGREEMENT.values())
            + " |\n|" + "---|" * (4 + len(AGREEMENT)) + "\n")
    lines = []
    for r in rows:
        cells = [f"{r[m]:.2f}" if m in ("middle_distance", "speed_kappa") else f"{r[m]:.3f}"
                 for m in AGREEMENT]
        seeds = "/".join(f"{v:.2f}" for v in r["speed_agree_seeds"])
        cells[0] += f" ({seeds})"
        lines.append(f"| {r['world']} | {r['probe']} | `{r['arm']}` | {r['vehicles']} | "
                     + " | ".join(cells) + " |")
    return ("\n### The two directions alone (the mechanism)\n\nper vehicle of every held-out "
            "pair, sampling seed and training seed: the forward-only (w = 1) and backward-only "
            "(w = 0) clean estimates on the same noisy latent (`noise`: pure noise at the "
            "first sigma; `true+S`: the true clip's latent plus S x noise), decoded and "
            "tracked; speed class slow / fast; shares of vehicles (speed agreement per training "
            "seed in brackets)\n\n" + head + "\n".join(lines) + "\n")


def _md_mechanism_paired(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = []
    for key in sorted({(r["world"], r["probe"], r["a"], r["b"]) for r in rows},
                      key=lambda k: (k[0], _noisiest_first(k[1]), COMPARISONS.index(k[2:]))):
        got = {r["metric"]: r for r in rows if (r["world"], r["probe"], r["a"], r["b"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | `{key[2]}` - `{key[3]}` | "
                     f"{_ci(got['speed_agree'], 3)} | {_ci(got['middle_distance'], 2)} |")
    return ("\n### The mechanism, paired over pairs\n\n| world | probe | a - b | speed class "
            "agrees | middle distance (px) |\n|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def _md_loss(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = []
    for r in rows:
        for sig in r["last"]:
            lines.append(f"| {r['world']} | `{r['arm']}` | {sig} | {r['start'][sig]:.4f} | "
                         f"{r['before'][sig]:.4f} | {r['last'][sig]:.4f} |")
    return ("\n### Held-out denoising loss\n\nthe training objective on held-out clips at fixed "
            "noise, mean over training seeds, at step 0 (the base weights), 500 steps before "
            "the last scored checkpoint and at it\n\n| world | arm | sigma | step 0 | last - "
            "500 | last |\n|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def contact(folders: dict[str, Path], bset, path: Path) -> str | None:
    """A contact sheet (the true clip, then each arm's video) of the held-out pair where the
    arms' videos (``folders``: arm -> a finished evaluation run) differ most in trajectory error
    plus 8 x blended. Returns the pair's id (None if a run is not finished)."""
    import PIL.Image

    from inbetweening.demo import contact_sheet
    from inbetweening.evaluation.results import load_npz, video_path

    runs = {arm: run_records(f, [p.id for p in bset.pairs]) for arm, f in folders.items()}
    if any(r is None for r in runs.values()):
        return None

    def gap(pair) -> float:
        score = [runs[a][pair.id]["trajectory_error"] + 8 * runs[a][pair.id]["blended"]
                 for a in folders]
        return max(score) - min(score)

    pair = max(bset.pairs, key=gap)
    rows = {"true": pair.true_clip() / 255.0}
    rows.update({arm: load_npz(video_path(f, "gi", pair.id)) / 255.0
                 for arm, f in folders.items()})
    sheet = contact_sheet([{k: np.asarray(v, np.float32) for k, v in rows.items()}])
    PIL.Image.fromarray(sheet).save(path)
    return pair.id

