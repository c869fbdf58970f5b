"""The table and plots of a finished run: means over pairs, markdown, PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..utils import atomic_path
from .results import Settings, load_record, rounded, write_json
from .sets import BenchmarkSet

RUN_TO_RUN = ("seconds",)  # in metrics.json only: the table and plots repeat exactly
# Metric name -> (column title, higher is better, decimals).
METRICS = {
    "psnr": ("PSNR", True, 2),
    "ssim": ("SSIM", True, 3),
    "lpips": ("LPIPS", False, 3),
    "endpoint_psnr": ("endpoint PSNR", True, 2),
    "trajectory_error": ("trajectory error (px)", False, 2),
    "direction_consistency": ("direction consistency", True, 3),
    "blended": ("blended vehicle-frames", False, 3),
    # the cost of a video: UNet predictions (fused: both directions in one) and wall time
    "predictions": ("predictions / video", False, 0),
    "seconds": ("seconds / video", False, 2),  # (metrics.json only: it varies run to run)
    "fid": ("FID", False, 2),
    "fvd": ("FVD", False, 2),
}


def aggregate(out: Path, bset: BenchmarkSet, methods: list[str],
              distribution: dict) -> dict:
    """``metrics.json``: per-method means over pairs and the per-pair values, in set order."""
    pairs, means = [], {}
    for method in methods:
        records = [load_record(out, method, p.id) for p in bset.pairs]
        names = [k for k in METRICS if k in records[0]]
        means[method] = {k: float(np.mean([r[k] for r in records])) for k in names}
        means[method].update(distribution.get(method, {}))
        pairs.extend(records)
    order = {p.id: i for i, p in enumerate(bset.pairs)}
    pairs.sort(key=lambda r: (order[r["pair"]], methods.index(r["method"])))
    return {"methods": rounded(means), "pairs": pairs}


def _fmt(value: float, decimals: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def markdown_table(result: dict, settings: Settings, bset: BenchmarkSet, notes: list[str]) -> str:
    methods = list(result["methods"])
    columns = [k for k in METRICS if k not in RUN_TO_RUN
               and any(k in result["methods"][m] for m in methods)]
    best = {}
    for k in columns:
        values = [result["methods"][m].get(k) for m in methods]
        values = [v for v in values if v is not None]
        if len(values) > 1:
            best[k] = round(max(values) if METRICS[k][1] else min(values), METRICS[k][2])
    head = ["method"] + [f"{METRICS[k][0]} {'↑' if METRICS[k][1] else '↓'}" for k in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m]
        for k in columns:
            v = result["methods"][m].get(k)
            text = _fmt(v, METRICS[k][2])
            if v is not None and k in best and round(v, METRICS[k][2]) == best[k]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    s = settings.sampling
    sampling = ", ".join(f"{k}={v}" for k, v in s.items() if v is not None) or "model defaults"
    header = [
        f"Evaluation of {len(bset.pairs)} pairs of `{Path(settings.set_root).name}` "
        f"({bset.kind}, {bset.frames} frames, {bset.width}x{bset.height}).",
        "",
        f"Model: {settings.model or 'bundled toy model'}; backward weights: "
        f"{settings.backward or 'the model folder’s'}; seed {settings.seed}; sampling: {sampling}. "
        "Means over pairs; PSNR, SSIM and LPIPS over the middle frames against the true clip; "
        "endpoint PSNR of the first and last frames to the keyframes (100 = identical)"
        + ("; trajectory error and direction consistency from the toy tracker" if bset.is_toy
           else "") + ". Best in bold.",
        "",
    ]
    return "\n".join(header + lines + [""] + [f"Note: {n}" for n in notes]) + "\n"


def write_plots(result: dict, folder: Path) -> list[Path]:
    """Per-method bars of every metric, and per-frame curves (PSNR, SSIM, trajectory error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["methods"])
    columns = [k for k in METRICS if k not in RUN_TO_RUN
               and any(k in result["methods"][m] for m in methods)]
    written = []
    colors = plt.get_cmap("tab10")

    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 3.2), squeeze=False)
    for ax, k in zip(axes[0], columns):
        values = [result["methods"][m].get(k, float("nan")) for m in methods]
        ax.bar(range(len(methods)), values, color=[colors(i % 10) for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{METRICS[k][0]} {'↑' if METRICS[k][1] else '↓'}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    written.append(_save_figure(fig, folder / "bars.png"))

    curves = [k for k in ("psnr", "ssim", "lpips", "trajectory_error")
              if any(k in r["per_frame"] for r in result["pairs"])]
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for ax, k in zip(axes[0], curves):
        for i, m in enumerate(methods):
            rows = np.array([r["per_frame"][k] for r in result["pairs"] if r["method"] == m],
                            dtype=float)
            if k == "psnr":
                rows = np.minimum(rows, 60.0)  # identical keyframes (100 dB) would flatten it
            ax.plot(range(rows.shape[1]), rows.mean(0), marker="o", ms=3, label=m,
                    color=colors(i % 10))
        title = METRICS[k][0] + (" (capped at 60)" if k == "psnr" else "")
        ax.set_title(f"{title} per frame", fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][-1].legend(fontsize=7)
    written.append(_save_figure(fig, folder / "per_frame.png"))
    return written


def _save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _skipped(nets) -> list[str]:
    flags = {"LPIPS": "--lpips-weights", "FID": "--inception-weights", "FVD": "--fvd-weights"}
    skipped = [name for name, net in (("LPIPS", nets.lpips), ("FID", nets.inception),
                                      ("FVD", nets.fvd)) if net is None]
    if not skipped:
        return []
    return [f"{', '.join(skipped)} skipped: no weights given "
            f"({', '.join(flags[s] for s in skipped)}; TorchScript files on disk, see "
            "`inbetween evaluate --help`)."]


def _limits(bset: BenchmarkSet, methods: list[str]) -> list[str]:
    notes = []
    if not bset.is_toy:
        notes.append("trajectory error and direction consistency need a toy set (ground-truth "
                     "tracks); not computed")
    if "flow" in methods:
        notes.append("flow = classical bidirectional optical-flow interpolation (OpenCV "
                     "Farneback), the stand-in for FILM/RIFE, whose weights cannot be had here.")
    return notes


def write_report(out: Path, bset: BenchmarkSet, methods: list[str], settings: Settings,
                 nets) -> dict:
    """``metrics.json``, ``metrics.md`` and ``plots/`` of a finished run; returns the metrics."""
    from .scoring import distribution_metrics

    distribution, distribution_notes = distribution_metrics(out, bset, methods, nets)
    result = aggregate(out, bset, methods, distribution)
    notes = _skipped(nets) + distribution_notes + _limits(bset, methods)
    (out / "plots").mkdir(exist_ok=True)
    write_plots(result, out / "plots")
    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(markdown_table(result, settings, bset, notes))
    write_json(out / "metrics.json", result)
    return result


def mean_and_spread(runs: list[dict], names) -> dict:
    """For each of ``names`` present in ``runs`` (one dict per seed): its mean over the runs and
    its spread (max - min), as ``NAME`` and ``NAME_spread``."""
    out = {}
    for name in names:
        values = [r[name] for r in runs if r.get(name) is not None]
        if values:
            out[name] = float(np.mean(values))
            out[name + "_spread"] = max(values) - min(values)
    return out



def paired_comparison(a, b, *, resamples: int = 10_000, seed: int = 0,
                      higher_is_better: bool = False, level: float = 0.95) -> dict:
    """Two methods (or arms) on the same pairs: ``a`` and ``b`` hold one value per pair, in the
    same order (e.g. each pair's mean over sampling seeds). The per-pair difference a - b: its
    mean, a percentile bootstrap interval at ``level`` over pairs (``resamples`` draws of the
    pairs with replacement, from a generator seeded with ``seed``, so the interval repeats), and
    on how many pairs each is better (ties are neither)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need one value per pair for both, not shapes {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    a_better = diff > 0 if higher_is_better else diff < 0
    b_better = diff < 0 if higher_is_better else diff > 0
    return {"mean_difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "pairs": int(len(diff)), "a_better": int(a_better.sum()),
            "b_better": int(b_better.sum())}
