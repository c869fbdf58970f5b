"""The evaluation harness: keyframe-pair sets, every method on every pair, metrics, table, plots.

    inbetween benchmark make --videos DIR --out SET --gap 25 [--pairs-per-video K]
    inbetween benchmark toy --n 16 --out SET            # held-out toy clips with true tracks
    inbetween evaluate SET --methods gi,trf,gi-noft,forward,flow,crossfade --out RESULTS

A *set* is a folder with ``manifest.json`` (readable JSON: the frame count and size, and for each
pair its id, keyframe files, the folder of the true clip's frames (PNG) and, for toy sets, the
ground truth of every vehicle: colour, heading, speed and centre in every frame).

``evaluate`` writes one record per (pair, method) as soon as it is done (``records/``, with the
generated frames in ``videos/``), so an interrupted run continues where it stopped; at the end
``metrics.json`` (``{"methods": {METHOD: {METRIC: mean}}, "pairs": [...]}``), ``metrics.md`` (the
table) and ``plots/*.png``. Every pair is generated with its own seed, derived from ``--seed`` and
the pair's id, so the results do not depend on which process does which pair or in which order:
under ``accelerate launch --multi_gpu --num_processes N -m inbetweening.cli evaluate ...`` (on
GPUs, or on the CPU: accelerate then runs N CPU processes; its ``--cpu`` flag would start only
one) or ``torchrun --nproc-per-node N -m inbetweening.cli evaluate ...`` the processes share the
pairs and the table is the one a single process makes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from . import baselines, media, metrics
from .methods import METHODS as DIFFUSION_METHODS
from .utils import InbetweeningError, atomic_path

MANIFEST = "manifest.json"
SET_FORMAT = "inbetweening-set/1"
ALL_METHODS = DIFFUSION_METHODS + tuple(baselines.BASELINES)
DEFAULT_METHODS = "gi,trf,gi-noft,forward,flow,crossfade"

# Metric name -> (column title, higher is better, decimals).
METRICS = {
    "psnr": ("PSNR", True, 2),
    "ssim": ("SSIM", True, 3),
    "lpips": ("LPIPS", False, 3),
    "endpoint_psnr": ("endpoint PSNR", True, 2),
    "trajectory_error": ("trajectory error (px)", False, 2),
    "direction_consistency": ("direction consistency", True, 3),
    "fid": ("FID", False, 2),
    "fvd": ("FVD", False, 2),
}
TOY_METRICS = ("trajectory_error", "direction_consistency")


# == sets =========================================================================================

@dataclass
class Pair:
    id: str
    start: Path
    end: Path
    clip: Path
    sprites: list[dict] | None = None  # toy sets: ground truth of each vehicle
    source: dict = field(default_factory=dict)

    def keyframes(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(media.read_image(self.start)), np.asarray(media.read_image(self.end)))

    def true_clip(self) -> np.ndarray:
        return media.read_video(self.clip)[0]


@dataclass
class BenchmarkSet:
    root: Path
    kind: str
    frames: int
    width: int
    height: int
    pairs: list[Pair]
    digest: str  # of the manifest: results belong to one version of a set

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"


def load_set(path: str | Path) -> BenchmarkSet:
    """Read and check a set folder: every file the manifest names must be there."""
    root = Path(path)
    if not root.is_dir():
        raise InbetweeningError(f"set folder not found: {root}")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise InbetweeningError(f"{root} is not a benchmark set (no {MANIFEST}); make one with "
                                "`inbetween benchmark make` or `inbetween benchmark toy`")
    text = manifest_path.read_bytes()
    try:
        manifest = json.loads(text)
        kind, frames = manifest["kind"], int(manifest["frames"])
        width, height = int(manifest["width"]), int(manifest["height"])
        entries = manifest["pairs"]
        pairs = [Pair(id=str(e["id"]), start=root / e["start"], end=root / e["end"],
                      clip=root / e["clip"], sprites=e.get("sprites"), source=e.get("source", {}))
                 for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise InbetweeningError(f"{manifest_path}: not a valid set manifest ({type(e).__name__}: "
                                f"{e})") from None
    if manifest.get("format") != SET_FORMAT:
        raise InbetweeningError(f"{manifest_path}: unknown format {manifest.get('format')!r} "
                                f"(expected {SET_FORMAT!r})")
    if not pairs:
        raise InbetweeningError(f"{manifest_path}: the set has no pairs")
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids) or any(not re.fullmatch(r"[\w.-]+", i) for i in ids):
        raise InbetweeningError(f"{manifest_path}: pair ids must be unique names of letters, "
                                "digits, '.', '-', '_'")
    missing = [str(p.relative_to(root)) for pair in pairs for p in (pair.start, pair.end)
               if not p.is_file()]
    missing += [str(pair.clip.relative_to(root)) for pair in pairs if not pair.clip.exists()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InbetweeningError(f"{manifest_path} names missing files: "
                                f"{', '.join(missing[:3])}{more}")
    if kind == "toy" and any(not p.sprites for p in pairs):
        raise InbetweeningError(f"{manifest_path}: a toy set needs the sprites of every pair")
    return BenchmarkSet(root=root, kind=kind, frames=frames, width=width, height=height,
                        pairs=pairs, digest=hashlib.sha256(text).hexdigest()[:16])


def _write_pair(folder: Path, pair_id: str, frames: np.ndarray) -> dict:
    """Keyframes and true clip of one pair under ``folder/pairs/ID``; manifest paths."""
    base = folder / "pairs" / pair_id
    base.mkdir(parents=True)
    PIL.Image.fromarray(frames[0]).save(base / "start.png")
    PIL.Image.fromarray(frames[-1]).save(base / "end.png")
    media.write_video(list(frames), base / "clip")
    rel = f"pairs/{pair_id}"
    return {"id": pair_id, "start": f"{rel}/start.png", "end": f"{rel}/end.png",
            "clip": f"{rel}/clip"}


def readable_json(obj) -> str:
    """JSON indented for people, with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(readable_json(manifest))


def make_toy_set(out: str | Path, n: int, seed: int | None = None, *, frames: int | None = None,
                 size: int | None = None, overwrite: bool = False) -> Path:
    """A set of ``n`` held-out toy clips (vehicles kept in view) with their true tracks."""
    from .toy import world

    seed = world.HELD_OUT_SEED if seed is None else int(seed)
    if seed < world.HELD_OUT_SEED:
        raise InbetweeningError(f"toy sets use held-out seeds (>= {world.HELD_OUT_SEED}); seeds "
                                "below are training data")
    if n < 1:
        raise InbetweeningError("--n must be at least 1")
    base = world.WorldConfig()
    cfg = world.WorldConfig(frames=frames or base.frames, size=size or base.size)
    if cfg.frames < 3 or cfg.size % 64:
        raise InbetweeningError("toy sets need at least 3 frames and a size that is a multiple "
                                "of 64")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InbetweeningError(f"{out} already exists (pass --overwrite to replace it)")
    from tqdm.auto import tqdm

    entries, skipped, index = [], [], 0
    with atomic_path(out, overwrite=overwrite) as tmp, tqdm(total=n, desc="toy pairs") as bar:
        tmp.mkdir()
        while len(entries) < n:
            try:
                clip = world.make_clip(seed, index, cfg, stay_in_view=True)
            except RuntimeError:  # vehicles that cannot be kept in view: take the next clip
                skipped.append(index)
                index += 1
                continue
            video = (clip.video[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            entry = _write_pair(tmp, f"toy-{seed}-{index:04d}", video)
            keep = clip.present[0].tolist()
            entry["sprites"] = [
                {"color": [round(float(c), 6) for c in clip.colors[0, s]],
                 "heading": round(float(clip.headings[0, s]), 6),
                 "speed": round(float(clip.speeds[0, s]), 6),
                 "centers": [[round(float(x), 4), round(float(y), 4)]
                             for x, y in clip.centers[0, s].tolist()]}
                for s in range(len(keep)) if keep[s]]
            entry["source"] = {"toy_seed": seed, "toy_index": index}
            entries.append(entry)
            index += 1
            bar.update()
        _write_manifest(tmp, {
            "format": SET_FORMAT, "kind": "toy", "frames": cfg.frames, "width": cfg.size,
            "height": cfg.size,
            "description": f"{n} held-out toy clips of seed {seed} (vehicles kept in view); "
                           "sprites: colour (RGB in [0, 1]), heading (radians, x right, y down), "
                           "speed (px/frame) and centre (x, y) of the coloured body per frame",
            "skipped_indices": skipped, "pairs": entries})
    return out


def model_geometry(model) -> tuple[int, int, int] | None:
    """(frames, width, height) a local diffusers SVD folder was configured for (from its config
    files, without loading weights), or None when unknown."""
    from .loading import resolve_model
    from .pipeline import vae_scale_factor

    source = resolve_model(model)
    if source is None or not Path(source).is_dir():
        return None
    try:
        unet = json.loads((Path(source) / "unet" / "config.json").read_text())
        vae = json.loads((Path(source) / "vae" / "config.json").read_text())
        scale = vae_scale_factor(vae)
        side = unet["sample_size"]
        h, w = (side, side) if isinstance(side, int) else side
        return int(unet["num_frames"]), int(w) * scale, int(h) * scale
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _video_sources(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InbetweeningError(f"video folder not found: {folder}")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in media.READABLE_VIDEOS:
            found.append(p)
        elif p.is_dir() and any(c.suffix.lower() in media.IMAGE_SUFFIXES for c in p.iterdir()):
            found.append(p)  # a folder of frames
    if not found:
        raise InbetweeningError(f"{folder}: no videos ({', '.join(media.READABLE_VIDEOS)}) or "
                                "frame folders in it")
    return found


def pair_starts(length: int, gap: int, count: int) -> list[int]:
    """First frames of up to ``count`` pairs ``gap`` frames apart, spread evenly over a video of
    ``length`` frames (empty if it is too short)."""
    last = length - 1 - gap
    if last < 0:
        return []
    return sorted({int(round(s)) for s in np.linspace(0, last, count)}) if count > 1 \
        else [last // 2]


def make_video_set(videos: str | Path, out: str | Path, *, gap: int = 25,
                   pairs_per_video: int = 1, frames: int | None = None,
                   size: tuple[int, int] | None = None, model=None,
                   overwrite: bool = False) -> tuple[Path, dict]:
    """A set from a folder of videos, as the paper made its DAVIS and Pexels pairs: keyframes
    ``gap`` frames apart, the true clip between them resampled to ``frames`` frames (nearest
    source frame at evenly spaced times), all centre-cropped and resized to ``size`` (W, H).
    ``frames`` and ``size`` default to the model's. Returns the folder and counts."""
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise InbetweeningError(f"{out} already exists (pass --overwrite to replace it)")
    if gap < 2:
        raise InbetweeningError("--gap must be at least 2 frames")
    if pairs_per_video < 1:
        raise InbetweeningError("--pairs-per-video must be at least 1")
    geometry = model_geometry(model)
    if frames is None or size is None:
        if geometry is None:
            from .toy.world import WorldConfig

            cfg = WorldConfig()
            geometry = (cfg.frames, cfg.size, cfg.size)
            print(f"note: no model folder to take the frame count and size from; using the toy "
                  f"world's ({cfg.frames} frames, {cfg.size}x{cfg.size})")
        frames = frames or geometry[0]
        size = size or geometry[1:]
    width, height = size
    if frames < 3:
        raise InbetweeningError("--frames must be at least 3")
    sources = _video_sources(Path(videos))
    counts = {"videos": len(sources), "unreadable": 0, "too_short": 0, "pairs": 0}
    entries = []
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for src in tqdm(sources, desc="videos"):
            try:
                video, fps = media.read_video(src)
            except InbetweeningError:
                counts["unreadable"] += 1
                continue
            starts = pair_starts(len(video), gap, pairs_per_video)
            if not starts:
                counts["too_short"] += 1
                continue
            stem = re.sub(r"[^\w.-]+", "_", src.stem if src.is_file() else src.name)
            for s in starts:
                idx = np.rint(np.linspace(s, s + gap, frames)).astype(int)
                clip = np.stack([np.asarray(PIL.ImageOps.fit(
                    PIL.Image.fromarray(video[i]), (width, height), PIL.Image.LANCZOS))
                    for i in idx])
                entry = _write_pair(tmp, f"{stem}-{s:05d}", clip)
                entry["source"] = {"video": str(src.resolve()), "first_frame": int(s),
                                   "last_frame": int(s + gap), "frames": idx.tolist(),
                                   "fps": fps}
                entries.append(entry)
        counts["pairs"] = len(entries)
        if not entries:
            raise InbetweeningError(
                f"{videos}: no usable video ({counts['unreadable']} unreadable, "
                f"{counts['too_short']} shorter than {gap + 1} frames)")
        _write_manifest(tmp, {
            "format": SET_FORMAT, "kind": "videos", "frames": frames, "width": width,
            "height": height,
            "description": f"keyframe pairs {gap} frames apart from the videos of {videos}, the "
                           f"true clip between them resampled to {frames} frames, centre-cropped "
                           f"and resized to {width}x{height}",
            "gap": gap, "pairs_per_video": pairs_per_video, "counts": counts, "pairs": entries})
    return out, counts


# == evaluation ===================================================================================

def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise InbetweeningError(f"unknown method {unknown[0]!r}; choose from "
                                f"{', '.join(ALL_METHODS)}")
    if not methods:
        raise InbetweeningError("no methods given")
    return list(dict.fromkeys(methods))


def pair_seed(seed: int, pair_id: str) -> int:
    """The generation seed of a pair: from the run's seed and the pair's id only, so that it does
    not depend on which process runs the pair or when (all methods share it)."""
    return (int(seed) * 1_000_003 + zlib.crc32(pair_id.encode())) % (2**63 - 1)


@dataclass
class Settings:
    """What a run was asked; a results folder holds the results of one set of settings."""

    set_root: str
    set_digest: str
    model: str | None
    backward: str | None
    seed: int
    sampling: dict

    def as_dict(self) -> dict:
        return dict(set=self.set_root, set_digest=self.set_digest, model=self.model,
                    backward=self.backward, seed=self.seed, sampling=self.sampling)


SAMPLING_OPTIONS = ("steps", "guidance", "reinject", "reinject_fraction", "fuse", "dual_pass",
                    "fps", "max_unet_batch", "decode_chunk")


def _sampling_options(args) -> dict:
    return {k: getattr(args, k, None) for k in SAMPLING_OPTIONS}


def _sampling_call(options: dict, method: str, bset: BenchmarkSet, pipe) -> dict:
    """Pipeline keyword arguments for ``method`` on the set's frames and size."""
    from .cli import sampling_kwargs

    ns = argparse.Namespace(**options, method=method, frames=bset.frames,
                            size=f"{bset.width}x{bset.height}")
    return sampling_kwargs(ns, pipe)


def _record_path(out: Path, method: str, pair_id: str) -> Path:
    return out / "records" / method / f"{pair_id}.json"


def _video_path(out: Path, method: str, pair_id: str) -> Path:
    return out / "videos" / method / f"{pair_id}.npz"


def generate(method: str, pair: Pair, bset: BenchmarkSet, *, pipe=None, options=None,
             seed: int = 0) -> np.ndarray:
    """The video of ``method`` between the pair's keyframes, (F, H, W, 3) uint8."""
    start, end = pair.keyframes()
    if method in baselines.BASELINES:
        video = baselines.BASELINES[method](start, end, bset.frames)
    else:
        import torch

        kw = _sampling_call(options or {}, method, bset, pipe)
        g = torch.Generator().manual_seed(pair_seed(seed, pair.id))
        video = pipe(PIL.Image.fromarray(start), PIL.Image.fromarray(end), generator=g,
                     output_type="np", **kw).frames[0]
    video = np.asarray(video)
    if video.shape != (bset.frames, bset.height, bset.width, 3):
        raise InbetweeningError(f"{method} made a video of shape {video.shape} for pair "
                                f"{pair.id}; the set needs {bset.frames} frames of "
                                f"{bset.width}x{bset.height}")
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def score(video: np.ndarray, pair: Pair, bset: BenchmarkSet, lpips=None) -> dict:
    """Per-pair metrics of a generated video (uint8) against the pair's true clip: means over the
    middle frames (the keyframes are given, not generated), and per-frame values for curves."""
    from .toy.tracker import endpoint_psnr, track_metrics

    true = pair.true_clip()
    if true.shape != video.shape:
        raise InbetweeningError(f"pair {pair.id}: the true clip has shape {true.shape}, the set "
                                f"says {video.shape}")
    start, end = pair.keyframes()
    per_frame = {"psnr": metrics.psnr_per_frame(video, true),
                 "ssim": metrics.ssim_per_frame(video, true)}
    out = {"psnr": float(np.mean(per_frame["psnr"][1:-1])),
           "ssim": float(np.mean(per_frame["ssim"][1:-1])),
           "endpoint_psnr": endpoint_psnr(video, start, end)}
    if lpips is not None:
        import torch

        with torch.no_grad():
            d = lpips.fn(metrics.as_video(video), metrics.as_video(true))
        per_frame["lpips"] = [float(x) for x in d]
        out["lpips"] = float(np.mean(per_frame["lpips"][1:-1]))
    if pair.sprites:
        sprites = pair.sprites
        m = track_metrics(video, [s["color"] for s in sprites], [s["centers"] for s in sprites],
                          [s["heading"] for s in sprites], None)
        out["trajectory_error"] = m["trajectory_error"]
        out["direction_consistency"] = m["direction_consistency"]
        per_frame["trajectory_error"] = m["per_frame_trajectory_error"]
    out["per_frame"] = per_frame
    return _rounded(out)


def _rounded(obj, digits: int = 10):
    """Metric values rounded to ``digits`` significant digits: what is stored does not depend on
    the last bits of floating-point sums (which vary with threads and memory layout)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _save_npz(path: Path, video: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, video=video)


def _load_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["video"]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(readable_json(obj))


@dataclass
class FeatureNets:
    lpips: metrics.FeatureNet | None = None
    inception: metrics.FeatureNet | None = None
    fvd: metrics.FeatureNet | None = None

    @classmethod
    def load(cls, lpips=None, inception=None, fvd=None) -> "FeatureNets":
        return cls(lpips=metrics.load_lpips(lpips) if lpips else None,
                   inception=metrics.load_inception(inception) if inception else None,
                   fvd=metrics.load_video_features(fvd) if fvd else None)


def distribution_metrics(out: Path, bset: BenchmarkSet, methods: list[str],
                         nets: FeatureNets) -> tuple[dict, list[str]]:
    """FID (middle frames) and FVD (whole clips) of each method against the true clips."""
    import torch

    result: dict[str, dict] = {m: {} for m in methods}
    notes = []
    if nets.inception is None and nets.fvd is None:
        return result, notes
    if len(bset.pairs) < 2:
        return result, ["FID and FVD need at least 2 pairs; skipped"]
    true = torch.stack([metrics.as_video(p.true_clip()) for p in bset.pairs])  # (N, F, 3, H, W)

    def generated(method):
        return torch.stack([metrics.as_video(_load_npz(_video_path(out, method, p.id)))
                            for p in bset.pairs])

    true_frames = true[:, 1:-1].flatten(0, 1)
    true_image = metrics.batched(nets.inception.fn, true_frames) if nets.inception else None
    true_video = metrics.batched(nets.fvd.fn, true, batch=4) if nets.fvd else None
    for method in methods:
        fake = generated(method)
        if nets.inception is not None:
            feats = metrics.batched(nets.inception.fn, fake[:, 1:-1].flatten(0, 1))
            result[method]["fid"] = metrics.frechet_distance_of(feats, true_image)
        if nets.fvd is not None:
            feats = metrics.batched(nets.fvd.fn, fake, batch=4)
            result[method]["fvd"] = metrics.frechet_distance_of(feats, true_video)
    if len(bset.pairs) < 50:
        notes.append(f"FID/FVD over only {len(bset.pairs)} pairs are rough estimates")
    return result, notes


def aggregate(out: Path, bset: BenchmarkSet, methods: list[str],
              distribution: dict) -> dict:
    """``metrics.json``: per-method means over pairs and the per-pair values, in set order."""
    pairs, means = [], {}
    for method in methods:
        records = [json.loads(_record_path(out, method, p.id).read_text()) for p in bset.pairs]
        names = [k for k in METRICS if k in records[0]]
        means[method] = {k: float(np.mean([r[k] for r in records])) for k in names}
        means[method].update(distribution.get(method, {}))
        pairs.extend(records)
    order = {p.id: i for i, p in enumerate(bset.pairs)}
    pairs.sort(key=lambda r: (order[r["pair"]], methods.index(r["method"])))
    return {"methods": _rounded(means), "pairs": pairs}


def _fmt(value: float, decimals: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def markdown_table(result: dict, settings: Settings, bset: BenchmarkSet, notes: list[str]) -> str:
    methods = list(result["methods"])
    columns = [k for k in METRICS if any(k in result["methods"][m] for m in methods)]
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
    columns = [k for k in METRICS if any(k in result["methods"][m] for m in methods)]
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


def _distributed_state(cpu: bool):
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=timedelta(hours=24))


def evaluate(set_path, methods, out, *, model=None, backward=None, device=None, dtype=None,
             seed: int = 0, options: dict | None = None, lpips=None, inception=None, fvd=None,
             overwrite: bool = False, on_record=None, quiet: bool = False) -> dict | None:
    """Run ``methods`` on every pair of the set at ``set_path``; write records, ``metrics.json``,
    ``metrics.md`` and plots under ``out``. Returns the metrics (on the main process; None on the
    others). Everything the user gave is checked before any work. ``on_record(method, pair_id)``
    is called after each record is written."""
    from tqdm.auto import tqdm

    # -- check everything first ------------------------------------------------------------------
    bset = load_set(set_path)
    methods = parse_methods(methods) if isinstance(methods, str) else parse_methods(",".join(methods))
    unknown = set(options or {}) - set(SAMPLING_OPTIONS)
    if unknown:
        raise InbetweeningError(f"unknown sampling options {sorted(unknown)}; known: "
                                f"{', '.join(SAMPLING_OPTIONS)}")
    options = {**dict.fromkeys(SAMPLING_OPTIONS), **(options or {})}
    nets = FeatureNets.load(lpips, inception, fvd)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InbetweeningError(f"{out} exists and is not a folder")
    from .loading import resolve_model

    source = resolve_model(model)
    settings = Settings(set_root=str(bset.root.resolve()), set_digest=bset.digest,
                        model=str(source) if source is not None else None,
                        backward=str(Path(backward).resolve()) if backward else None,
                        seed=int(seed), sampling=options)
    settings_path = out / "settings.json"
    if settings_path.is_file() and not overwrite:
        old = json.loads(settings_path.read_text())
        diff = [k for k, v in settings.as_dict().items() if old.get(k) != v]
        if diff:
            raise InbetweeningError(f"{out} holds results made with other settings (different "
                                    f"{', '.join(diff)}); give another --out or --overwrite")
    elif out.is_dir() and any(out.iterdir()) and not settings_path.is_file() and not overwrite:
        raise InbetweeningError(f"{out} is a folder that does not hold evaluation results; give "
                                "another --out")

    diffusion = [m for m in methods if m in DIFFUSION_METHODS]
    import torch

    cpu = device in ("cpu",) or (device is None and not torch.cuda.is_available())
    state = _distributed_state(cpu)
    pipe = None
    if diffusion:
        from . import backward as bw
        from .loading import load_pipeline

        dev = device if device is not None or state.num_processes == 1 else state.device
        pipe = load_pipeline(model, backward, dev, dtype, quiet=quiet or not state.is_main_process)
        pipe.set_progress_bar_config(disable=True)
        if "gi" in diffusion and bw.loaded_variant(pipe.unet) is None:
            raise InbetweeningError("method 'gi' needs backward weights (--backward FILE, or a "
                                    "model folder with backward.safetensors)")
        for m in diffusion:  # frame count, size and steps the model can take
            kw = _sampling_call(options, m, bset, pipe)
            pipe.check_inputs(kw["height"], kw["width"], kw["num_frames"], m,
                              kw.get("num_inference_steps", 50))

    # -- prepare the results folder (main process), then share the work -------------------------
    if state.is_main_process:
        if overwrite:
            for name in ("records", "videos", "plots", "metrics.json", "metrics.md",
                         "settings.json"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(settings_path, settings.as_dict())
    state.wait_for_everyone()

    todo = [(p, m) for p in bset.pairs for m in methods
            if not _record_path(out, m, p.id).is_file()]
    mine = todo[state.process_index::state.num_processes]
    done = len(bset.pairs) * len(methods) - len(todo)
    if state.is_main_process and done and not quiet:
        print(f"resuming: {done} of {len(bset.pairs) * len(methods)} results already in {out}")
    t0 = time.time()
    desc = "evaluate" if state.num_processes == 1 else f"evaluate [{state.process_index}]"
    for pair, method in tqdm(mine, desc=desc, position=state.process_index, disable=quiet):
        video = generate(method, pair, bset, pipe=pipe, options=options, seed=seed)
        _save_npz(_video_path(out, method, pair.id), video)
        record = {"pair": pair.id, "method": method, "seed": pair_seed(seed, pair.id)
                  if method in DIFFUSION_METHODS else None, **score(video, pair, bset, nets.lpips)}
        _write_json(_record_path(out, method, pair.id), record)
        if on_record is not None:
            on_record(method, pair.id)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    # -- aggregate (main process) ---------------------------------------------------------------
    distribution, notes = distribution_metrics(out, bset, methods, nets)
    result = aggregate(out, bset, methods, distribution)
    skipped = [name for name, net, flag in (("LPIPS", nets.lpips, "--lpips-weights"),
                                            ("FID", nets.inception, "--inception-weights"),
                                            ("FVD", nets.fvd, "--fvd-weights")) if net is None]
    if skipped:
        flags = {"LPIPS": "--lpips-weights", "FID": "--inception-weights", "FVD": "--fvd-weights"}
        notes.insert(0, f"{', '.join(skipped)} skipped: no weights given "
                        f"({', '.join(flags[s] for s in skipped)}; TorchScript files on disk, see "
                        "`inbetween evaluate --help`).")
    if not bset.is_toy:
        notes.append("trajectory error and direction consistency need a toy set (ground-truth "
                     "tracks); not computed")
    if "flow" in methods:
        notes.append("flow = classical bidirectional optical-flow interpolation (OpenCV "
                     "Farneback), the stand-in for FILM/RIFE, whose weights cannot be had here.")
    (out / "plots").mkdir(exist_ok=True)
    write_plots(result, out / "plots")
    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(markdown_table(result, settings, bset, notes))
    _write_json(out / "metrics.json", result)
    if not quiet:
        print(f"{len(mine)} results in {time.time() - t0:.1f} s; wrote {out / 'metrics.json'}, "
              f"{out / 'metrics.md'}, {out / 'plots'}")
    return result


# == command line =================================================================================

def _benchmark_make(args) -> None:
    from .loading import parse_size

    out, counts = make_video_set(args.videos, args.out, gap=args.gap,
                                 pairs_per_video=args.pairs_per_video, frames=args.frames,
                                 size=parse_size(args.size), model=args.model,
                                 overwrite=args.overwrite)
    print(f"wrote {out}: {counts['pairs']} pairs from {counts['videos']} videos "
          f"({counts['unreadable']} unreadable, {counts['too_short']} too short, skipped)")


def _benchmark_toy(args) -> None:
    from .loading import parse_size

    size = parse_size(args.size)
    if size is not None and size[0] != size[1]:
        raise InbetweeningError("toy clips are square: give --size like 64x64")
    out = make_toy_set(args.out, args.n, args.seed, frames=args.frames,
                       size=size[0] if size else None, overwrite=args.overwrite)
    print(f"wrote {out}: {args.n} held-out toy pairs")


def _evaluate(args) -> None:
    result = evaluate(args.set, args.methods, args.out, model=args.model, backward=args.backward,
                      device=args.device, dtype=args.dtype, seed=args.seed,
                      options=_sampling_options(args), lpips=args.lpips_weights,
                      inception=args.inception_weights, fvd=args.fvd_weights,
                      overwrite=args.overwrite)
    if result is not None:
        print((Path(args.out) / "metrics.md").read_text())


def add_command(sub) -> None:
    from .cli import add_model_args

    bench = sub.add_parser("benchmark", help="make keyframe-pair sets for `inbetween evaluate`",
                           description="Make a benchmark set: keyframe pairs with the true clip "
                                       "between them, and a readable manifest.json.")
    bsub = bench.add_subparsers(dest="benchmark_command", required=True, metavar="KIND")
    make = bsub.add_parser("make", help="pairs from a folder of videos (as the paper's "
                                        "DAVIS/Pexels pairs)")
    make.add_argument("--videos", required=True, help="folder of videos (mp4, webm, gif, mov, "
                                                      "mkv, avi) or of frame folders")
    make.add_argument("--out", required=True, help="set folder to write")
    make.add_argument("--gap", type=int, default=25, help="frames between the keyframes "
                                                          "(default 25)")
    make.add_argument("--pairs-per-video", type=int, default=1,
                      help="pairs taken from each video, spread over it (default 1)")
    make.add_argument("--frames", type=int, default=None,
                      help="frames of the true clip, keyframes included (default: the model's)")
    make.add_argument("--size", default=None, help="WxH, multiples of 64 (default: the model's)")
    make.add_argument("--model", default=None, help="model whose frame count and size to use "
                                                    "(default: the bundled toy model)")
    make.add_argument("--overwrite", action="store_true")
    make.set_defaults(func=_benchmark_make)

    toy = bsub.add_parser("toy", help="held-out toy clips with ground-truth tracks")
    toy.add_argument("--n", type=int, default=16, help="number of pairs (default 16)")
    toy.add_argument("--seed", type=int, default=None,
                     help="toy seed, at least the held-out seed 1000000 (default)")
    toy.add_argument("--out", required=True, help="set folder to write")
    toy.add_argument("--frames", type=int, default=None, help="frames per clip (default: the toy "
                                                              "world's, 8)")
    toy.add_argument("--size", default=None, help="WxH, square, multiple of 64 (default 64x64)")
    toy.add_argument("--overwrite", action="store_true")
    toy.set_defaults(func=_benchmark_toy)

    ev = sub.add_parser(
        "evaluate", help="run methods on a benchmark set; metrics, table and plots",
        description="Run every method on every pair of SET and compare with the true clips. "
                    "Resumable: finished pairs are kept in --out and not redone. Several "
                    "processes share the pairs under `accelerate launch --multi_gpu "
                    "--num_processes N -m inbetweening.cli evaluate ...` (GPUs or CPU) or "
                    "`torchrun --nproc-per-node N -m inbetweening.cli evaluate ...`.",
        epilog="LPIPS, FID and FVD need feature networks on disk, as TorchScript files: "
               "--lpips-weights vgg16.pt (NVIDIA's LPIPS VGG16) or a scripted lpips.LPIPS; "
               "--inception-weights inception-2015-12-05.pt (the FID Inception); --fvd-weights "
               "i3d_torchscript.pt (StyleGAN-V's I3D) or a TorchScript export of VideoMAE-v2 "
               "features (the content-debiased FVD). Without them those columns are skipped.")
    ev.add_argument("set", metavar="SET", help="benchmark set folder (with manifest.json)")
    ev.add_argument("--methods", default=DEFAULT_METHODS,
                    help=f"comma-separated, from {', '.join(ALL_METHODS)} (default: all)")
    ev.add_argument("--out", required=True, help="results folder")
    ev.add_argument("--overwrite", action="store_true",
                    help="discard results already in --out and start afresh")
    add_model_args(ev)
    ev.add_argument("--seed", type=int, default=0, help="base seed; each pair gets its own seed "
                                                        "from it and the pair's id (default 0)")
    ev.add_argument("--steps", type=int, default=None,
                    help="denoising steps (default: the model's recommendation, else 50)")
    ev.add_argument("--guidance", default=None, help="MIN,MAX per-frame guidance")
    ev.add_argument("--reinject", type=int, default=None, help="noise re-injections per step")
    ev.add_argument("--reinject-fraction", type=float, default=None)
    ev.add_argument("--fuse", default=None, choices=["average", "linear"])
    ev.add_argument("--dual-pass", default=None, choices=["fused", "reference"])
    ev.add_argument("--fps", type=int, default=None, help="fps conditioning of the UNet")
    ev.add_argument("--max-unet-batch", type=int, default=None)
    ev.add_argument("--decode-chunk", type=int, default=None)
    ev.add_argument("--lpips-weights", default=None, help="LPIPS network (TorchScript)")
    ev.add_argument("--inception-weights", default=None, help="FID Inception (TorchScript)")
    ev.add_argument("--fvd-weights", default=None, help="FVD video network (TorchScript)")
    ev.set_defaults(func=_evaluate)
