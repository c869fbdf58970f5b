"""Generating a method's video for a pair, and scoring it against the truth."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .. import baselines, metrics
from ..options import SamplingOptions
from ..utils import InbetweeningError, mix_seed
from . import ALL_METHODS
from .results import load_npz, rounded, video_path
from .sets import BenchmarkSet, Pair


def parse_methods(text: str) -> list[str]:
    """Comma-separated method names (``all``: every method) -> the list, each once."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if methods == ["all"]:
        return list(ALL_METHODS)
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
    return mix_seed(seed, zlib.crc32(pair_id.encode()), scale=1, offset=0)


# The sampling options a run may set: the method, the frame count and the size are the set's.
SET_BY_THE_SET = ("method", "frames", "size")


def sampling_call(options: SamplingOptions | None, method: str, bset: BenchmarkSet,
                  pipe) -> dict:
    """Pipeline keyword arguments for ``method`` on the set's frames and size (the pipeline
    resolves the rest: :meth:`InbetweenPipeline.call_settings`)."""
    options = (options or SamplingOptions()).replace(
        method=method, frames=bset.frames, size=(bset.width, bset.height)).check()
    return options.call_kwargs()


def generate(method: str, pair: Pair, bset: BenchmarkSet, *, pipe=None,
             options: SamplingOptions | None = None, seed: int = 0) -> np.ndarray:
    """The video of ``method`` between the pair's keyframes, (F, H, W, 3) uint8."""
    start, end = pair.keyframes()
    if method in baselines.BASELINES:
        video = baselines.BASELINES[method](start, end, bset.frames)
    else:
        import torch

        kw = sampling_call(options, method, bset, pipe)
        g = torch.Generator().manual_seed(pair_seed(seed, pair.id))
        video = pipe(PIL.Image.fromarray(start), PIL.Image.fromarray(end), generator=g,
                     output_type="np", **kw).frames[0]
    video = np.asarray(video)
    if video.shape != (bset.frames, bset.height, bset.width, 3):
        raise InbetweeningError(f"{method} made a video of shape {video.shape} for pair "
                                f"{pair.id}; the set needs {bset.frames} frames of "
                                f"{bset.width}x{bset.height}")
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def _blended(video: np.ndarray, colors: list) -> float:
    """Share of the (vehicle, middle frame) pairs where a vehicle is shown twice or faded
    (:func:`inbetweening.toy.blending.blending`)."""
    from ..toy.blending import blending

    return float(blending(video, colors)["blended"])


def score(video: np.ndarray, pair: Pair, bset: BenchmarkSet, lpips=None) -> dict:
    """Per-pair metrics of a generated video (uint8) against the pair's true clip: means over the
    middle frames (the keyframes are given, not generated), and per-frame values for curves."""
    from ..toy.tracker import endpoint_psnr, track_metrics

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
        out["blended"] = _blended(video, [s["color"] for s in sprites])
    out["per_frame"] = per_frame
    return rounded(out)


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
        return torch.stack([metrics.as_video(load_npz(video_path(out, method, p.id)))
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
