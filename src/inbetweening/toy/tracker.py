"""A tracker for toy videos, and the trajectory metrics built on it.

Each vehicle of a toy clip has a known, saturated colour over a muted background. In every frame
the tracker takes a colour-weighted centroid of the pixels near the vehicle's previous position
(a few mean-shift iterations, so the window follows the sprite), starting from its known
position in the first keyframe. Generated sprites are often blurred, smeared or paler than the
true ones: pixels are weighted by how close they come to the sprite's colour (a soft threshold,
not an exact match), and a sprite whose colour is nowhere near its last position is reported lost
and stays where it was last seen (so it neither moves nor agrees with its heading).

The metrics compare the tracks with the ground truth of :mod:`inbetweening.toy.world`:

- :func:`trajectory_error`: mean distance in pixels between tracked and true centres over the
  middle frames (the keyframes are given, not generated);
- :func:`direction_consistency`: the fraction of frame-to-frame steps that move the way the
  vehicle faces (by at least ``min_step`` pixels along the heading, within ``max_angle`` degrees
  of it); a still video scores 0, a reversed one about 0, a true one 1;
- :func:`endpoint_psnr`: PSNR of the first and last frames to the keyframes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import as_video, psnr
from ..utils import InbetweeningError

RADIUS = 12.0  # search window around the previous position, pixels (speed <= 3.5 px/frame)
COLOR_TOLERANCE = 0.45  # RGB distance at which a pixel stops counting as the sprite's colour
MIN_WEIGHT = 6.0  # total weight (about "pixels of sprite colour") below which a sprite is lost
MEAN_SHIFT_ITERATIONS = 4


@dataclass
class Tracks:
    """``positions``: (S, F, 2) tracked (x, y) centres; ``found``: (S, F) False where the sprite's
    colour was not found near its last position (the position is then the last one seen)."""

    positions: np.ndarray
    found: np.ndarray


def color_distance(frame: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """(H, W) RGB (Euclidean) distance of each pixel of ``frame`` (3, H, W) to ``color`` (3,)."""
    return (frame - color[:, None, None]).norm(dim=0)


def _weights(frame: torch.Tensor, color: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(H, W) weight of each pixel as the sprite's colour: 1 at the colour, falling to 0 at
    ``tolerance`` (RGB distance), squared so that near-misses of the background count little."""
    dist = color_distance(frame, color)
    return (1 - dist / tolerance).clamp(min=0) ** 2


def track(video, colors, start, *, radius: float = RADIUS, tolerance: float = COLOR_TOLERANCE,
          min_weight: float = MIN_WEIGHT, iterations: int = MEAN_SHIFT_ITERATIONS) -> Tracks:
    """Track sprites of known ``colors`` ((S, 3) in [0, 1]) through ``video`` from their
    positions ``start`` ((S, 2) as (x, y)) in its first frame.

    The first frame is tracked too (from ``start``), so a video whose first frame does not
    show the sprite where the keyframe has it is measured as such.
    """
    frames = as_video(video).double()  # float64: sums that do not depend on memory layout
    colors = torch.as_tensor(np.asarray(colors), dtype=torch.float64).reshape(-1, 3)
    start = torch.as_tensor(np.asarray(start), dtype=torch.float64).reshape(-1, 2)
    if len(colors) != len(start):
        raise InbetweeningError(f"{len(colors)} colours but {len(start)} start positions")
    n_frames, _, h, w = frames.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    positions = np.zeros((len(colors), n_frames, 2), dtype=np.float64)
    found = np.zeros((len(colors), n_frames), dtype=bool)
    for s in range(len(colors)):
        pos = start[s].clone()
        for t in range(n_frames):
            weight = _weights(frames[t], colors[s], tolerance)
            ok = False
            estimate = pos
            for _ in range(iterations):
                near = ((xs - estimate[0]) ** 2 + (ys - estimate[1]) ** 2) <= radius ** 2
                wt = weight * near
                total = wt.sum()
                if total < min_weight:
                    break
                ok = True
                new = torch.stack([(wt * xs).sum() / total, (wt * ys).sum() / total])
                converged = (new - estimate).norm() < 1e-3
                estimate = new
                if converged:
                    break
            if ok:
                pos = estimate
            positions[s, t] = pos.numpy()
            found[s, t] = ok
    return Tracks(positions=positions, found=found)


def present_mask(present, n: int) -> np.ndarray:
    """Which of ``n`` sprites are present: all when ``present`` is None."""
    return np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)


def trajectory_error(positions, true_centers, present=None, *, per_frame: bool = False):
    """Mean distance (pixels) between tracked ``positions`` and ``true_centers`` (both (S, F, 2))
    over the middle frames 1 .. F-2 and the sprites ``present``. With ``per_frame``, the mean over
    sprites for every frame (keyframes included) as an (F,) array instead."""
    pos, true = np.asarray(positions, dtype=np.float64), np.asarray(true_centers, dtype=np.float64)
    if pos.shape != true.shape:
        raise InbetweeningError(f"tracks {pos.shape} and ground truth {true.shape} differ in shape")
    keep = present_mask(present, len(pos))
    if not keep.any():
        raise InbetweeningError("no sprite is present")
    dist = np.linalg.norm(pos[keep] - true[keep], axis=-1)  # (S', F)
    if per_frame:
        return dist.mean(axis=0)
    if dist.shape[1] < 3:
        raise InbetweeningError("trajectory error needs at least 3 frames")
    return float(dist[:, 1:-1].mean())


def direction_consistency(positions, headings, present=None, *, min_step: float = 0.5,
                          max_angle: float = 45.0) -> float:
    """Fraction of frame-to-frame steps (all F-1 of each present sprite) that move forward: at
    least ``min_step`` pixels along the true heading and within ``max_angle`` degrees of it."""
    pos = np.asarray(positions, dtype=np.float64)
    keep = present_mask(present, len(pos))
    if not keep.any():
        raise InbetweeningError("no sprite is present")
    head = np.asarray(headings, dtype=np.float64)[keep]
    direction = np.stack([np.cos(head), np.sin(head)], -1)[:, None, :]  # (S', 1, 2)
    steps = np.diff(pos[keep], axis=1)  # (S', F-1, 2)
    along = (steps * direction).sum(-1)
    length = np.linalg.norm(steps, axis=-1)
    forward = (along >= min_step) & (along >= math.cos(math.radians(max_angle)) * length)
    return float(forward.mean())


def speed_along_heading(positions, heading: float, found=None, min_steps: int = 2
                        ) -> float | None:
    """Mean frame-to-frame displacement (pixels per frame) of one sprite's ``positions`` (F, 2)
    along ``heading``, over the steps where it was ``found`` (F,) at both ends; None when fewer
    than ``min_steps`` such steps remain."""
    pos = np.asarray(positions, dtype=np.float64)
    seen = np.ones(len(pos), dtype=bool) if found is None else np.asarray(found, dtype=bool)
    steps = np.diff(pos, axis=0) @ np.array([math.cos(heading), math.sin(heading)])
    ok = seen[1:] & seen[:-1]
    return float(steps[ok].mean()) if ok.sum() >= min_steps else None


def endpoint_psnr(video, start_key, end_key) -> float:
    """Mean PSNR (dB) of the video's first frame to ``start_key`` and its last to ``end_key``
    (images as (H, W, 3) or (3, H, W), uint8 or float)."""
    frames = as_video(video)
    return 0.5 * (psnr(frames[0], start_key) + psnr(frames[-1], end_key))


def track_metrics(video, colors, centers, headings, present, start_key=None, end_key=None) -> dict:
    """All tracker metrics of one video against the ground truth of its clip (arrays as in
    :class:`inbetweening.toy.world.Clips`, for one clip: colors (S, 3), centers (S, F, 2),
    headings (S,), present (S,)). Also the per-frame trajectory error, for curves."""
    keep = present_mask(present, len(np.asarray(colors)))
    centers = np.asarray(centers, dtype=np.float64)[keep]
    tracks = track(video, np.asarray(colors)[keep], centers[:, 0])
    out = {
        "trajectory_error": trajectory_error(tracks.positions, centers),
        "direction_consistency": direction_consistency(tracks.positions,
                                                       np.asarray(headings)[keep]),
        "per_frame_trajectory_error": trajectory_error(tracks.positions, centers,
                                                       per_frame=True).tolist(),
        "lost_fraction": float(1 - tracks.found.mean()),
    }
    if start_key is not None and end_key is not None:
        out["endpoint_psnr"] = endpoint_psnr(video, start_key, end_key)
    return out
