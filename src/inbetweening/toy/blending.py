"""A blending measure for toy videos: does a vehicle appear twice, or fade, in the middle frames?

When the forward and backward directions of generative inbetweening disagree about where a
vehicle is, their fused frames show it in two places at once, each copy at part strength, or
pale in one place while it appears in another. For every vehicle (of known colour) and frame
this module finds the pixels holding the vehicle's colour, splits them into connected blobs and
compares them with the first frame (a keyframe, where the vehicle is whole).

How much of a pixel is the vehicle's colour (its *share*, 0 to 1) is measured like the tracker
(:mod:`inbetweening.toy.tracker`) measures it, by RGB distance to the colour, but on a linear
scale set per pixel by the background there: 1 at the colour, 0 at (or beyond) the distance of
the background pixel, so a vehicle blended 50/50 with the background has a share of about 0.5
and a vehicle at 30 % strength about 0.3. (The tracker's fixed tolerance and squared falloff
would make a merely pale vehicle lose most of its weight, the same as a faded one.) The toy
world's background is static and darker than any vehicle or white stripe, so the background of
a pixel is taken from the frame where that pixel is darkest. Its distance to the colour is never
taken below the tracker's tolerance, so background that happens to lie near the colour does not
count as the vehicle.

Per vehicle and frame (all (S, F) arrays, S the present vehicles):

- ``mass``: the summed share of the vehicle's blobs, in "pixels of full colour" (a whole
  vehicle is about 110); blobs are the 8-connected regions where the share exceeds
  ``min_alpha`` (:data:`MIN_ALPHA`), and blobs of mass below ``min_blob`` (:data:`MIN_BLOB`)
  are specks that count for nothing;
- ``split``: the share of the mass outside the largest blob (0: one blob; 0.5: two equal
  copies);
- ``mass_ratio``: mass relative to the first frame's (1: as strong as in the keyframe; 0.3: a
  vehicle faded to 30 %, or gone; about 1 for two half-strength copies, which ``split`` sees);
- ``spread``: the number of blob pixels relative to the first frame's (about 2 when two
  half-strength copies touch into one blob, which neither ``split`` nor the mass sees);
- ``blended``: ``split`` above :data:`SPLIT_LIMIT`, ``mass_ratio`` below :data:`FADE_LIMIT`
  or ``spread`` above :data:`SPREAD_LIMIT`.

Clip-level numbers are means over the middle frames 1 .. F-2 (the keyframes are given, not
generated) and the present vehicles. On true toy clips split is 0, mass ratio 0.97-1.03 and
spread 0.92-1.09 (60 clips); a blurred, paler (75 %) rendering of them keeps the mass ratio
above 0.6 and the spread below 1.35, so it is not judged blended.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..metrics import as_video
from ..utils import InbetweeningError
from .tracker import COLOR_TOLERANCE, color_distance, present_mask

MIN_ALPHA = 0.35  # a pixel is part of a blob if at least this share of it is the vehicle's colour
MIN_BLOB = 4.0  # blobs of smaller mass (pixels of full colour) are specks and are ignored
SPLIT_LIMIT = 0.2  # judged blended above this share of the mass outside the largest blob ...
FADE_LIMIT = 0.5  # ... or below this mass relative to the first frame ...
SPREAD_LIMIT = 1.5  # ... or above this many blob pixels relative to the first frame


def background(frames: torch.Tensor) -> torch.Tensor:
    """(3, H, W) estimate of a static background under bright vehicles: each pixel from the
    frame of ``frames`` ((F, 3, H, W)) where its brightest channel is lowest."""
    darkest = frames.amax(dim=1).argmin(dim=0)  # (H, W) frame index
    return frames.gather(0, darkest.expand(1, 3, *darkest.shape))[0]


def color_share(frame: torch.Tensor, color: torch.Tensor, back: torch.Tensor,
                floor: float = COLOR_TOLERANCE) -> torch.Tensor:
    """(H, W) share of each pixel that is ``color``: 1 at the colour, falling linearly to 0 at
    the colour's distance to the background ``back`` there (at least ``floor``)."""
    contrast = color_distance(back, color).clamp(min=floor)
    return (1 - color_distance(frame, color) / contrast).clamp(0, 1)


def blobs(share: torch.Tensor, min_alpha: float = MIN_ALPHA,
          min_blob: float = MIN_BLOB) -> tuple[np.ndarray, np.ndarray]:
    """Masses (summed share) and areas (pixels) of the 8-connected blobs where ``share``
    exceeds ``min_alpha``, leaving out specks of mass below ``min_blob``."""
    share = share.numpy()
    inside = (share > min_alpha).astype(np.uint8)
    count, labels = cv2.connectedComponents(inside, connectivity=8)
    masses = np.bincount(labels.ravel(), weights=(share * inside).ravel(), minlength=count)[1:]
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    keep = masses >= min_blob
    return masses[keep], areas[keep]


def vehicle_blobs(frames: torch.Tensor, colors: torch.Tensor, min_alpha: float = MIN_ALPHA,
                  min_blob: float = MIN_BLOB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, F) mass, area and split of each vehicle of ``colors`` ((S, 3)) in each of ``frames``
    ((F, 3, H, W)): the summed mass and area of its blobs, and the share of the mass outside
    the largest one (0 where there is no blob)."""
    back = background(frames)
    shape = (len(colors), len(frames))
    mass, area, split = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for s, color in enumerate(colors):
        for t, frame in enumerate(frames):
            masses, areas = blobs(color_share(frame, color, back), min_alpha, min_blob)
            mass[s, t], area[s, t] = masses.sum(), areas.sum()
            split[s, t] = 1 - masses.max() / masses.sum() if len(masses) else 0.0
    return mass, area, split


def blending(video, colors, present=None, *, min_alpha: float = MIN_ALPHA,
             min_blob: float = MIN_BLOB, split_limit: float = SPLIT_LIMIT,
             fade_limit: float = FADE_LIMIT, spread_limit: float = SPREAD_LIMIT) -> dict:
    """Blending measure of one toy ``video`` ((F, 3, H, W) or (F, H, W, 3), uint8 or float in
    [0, 1]) whose vehicles have ``colors`` ((S, 3) in [0, 1]; slots with ``present`` False are
    left out).

    Returns clip-level floats over the middle frames and present vehicles: ``split`` (mean share
    of the mass outside the largest blob), ``mass_ratio`` (mean mass relative to the first
    frame), ``min_mass_ratio``, ``spread`` (mean blob area relative to the first frame) and
    ``blended`` (fraction of (vehicle, middle frame) pairs judged blended); and (S', F) arrays
    over all frames: ``split_per_frame``, ``mass_ratio_per_frame``, ``spread_per_frame``,
    ``blended_per_frame`` (bool). See the module's docstring for what each means.
    """
    frames = as_video(video).double()
    colors = torch.as_tensor(np.asarray(colors), dtype=torch.float64).reshape(-1, 3)
    keep = present_mask(present, len(colors))
    if len(keep) != len(colors):
        raise InbetweeningError(f"{len(colors)} colours but {len(keep)} present flags")
    if not keep.any():
        raise InbetweeningError("no vehicle is present")
    if len(frames) < 3:
        raise InbetweeningError("the blending measure needs at least 3 frames")
    mass, area, split = vehicle_blobs(frames, colors[torch.as_tensor(keep)], min_alpha,
                                      min_blob)
    # A vehicle missing from the first frame is compared with a speck rather than with nothing.
    mass_ratio = mass / np.maximum(mass[:, :1], min_blob)
    spread = area / np.maximum(area[:, :1], 1)
    blended = (split > split_limit) | (mass_ratio < fade_limit) | (spread > spread_limit)
    middle = slice(1, -1)
    return {
        "split": float(split[:, middle].mean()),
        "mass_ratio": float(mass_ratio[:, middle].mean()),
        "min_mass_ratio": float(mass_ratio[:, middle].min()),
        "spread": float(spread[:, middle].mean()),
        "blended": float(blended[:, middle].mean()),
        "split_per_frame": split,
        "mass_ratio_per_frame": mass_ratio,
        "spread_per_frame": spread,
        "blended_per_frame": blended,
    }
