"""Classical inbetweening baselines, to compare the diffusion methods with.

``flow``
    Bidirectional optical-flow interpolation: dense flow both ways between the keyframes
    (OpenCV's Farneback), the flow from each in-between time to either keyframe approximated from
    them as in Super SloMo (Jiang et al. 2018, eq. 4), both keyframes warped there and blended by
    time. It is the stand-in for the learned frame interpolators the paper compares with (FILM,
    RIFE), whose weights cannot be had here: same idea (flow + warp + blend, no generation), far
    weaker on large motion. Expect it to morph rather than move when things travel far.
``crossfade``
    A linear blend of the two keyframes.

Both return (F, H, W, 3) float32 videos in [0, 1] whose first and last frames are the keyframes.
"""

from __future__ import annotations

import math

import numpy as np

from .utils import InbetweeningError


def as_image(image) -> np.ndarray:
    """A keyframe (PIL image, (H, W, 3) array uint8 or float in [0, 1], or (3, H, W) tensor) as an
    (H, W, 3) float32 array in [0, 1]."""
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach"):  # torch
        image = image.detach().cpu().float().permute(1, 2, 0).numpy()
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InbetweeningError(f"a keyframe must be (H, W, 3), not {a.shape}")
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def _pair(start, end) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_image(start), as_image(end)
    if a.shape != b.shape:
        raise InbetweeningError(f"keyframes of different sizes: {a.shape[:2]} and {b.shape[:2]}")
    return a, b


def _times(num_frames: int) -> np.ndarray:
    if num_frames < 2:
        raise InbetweeningError("a video between two keyframes has at least 2 frames")
    return np.linspace(0.0, 1.0, num_frames)


def crossfade(start, end, num_frames: int) -> np.ndarray:
    """Linear blend: frame i is (1 - t) start + t end with t = i / (F - 1)."""
    a, b = _pair(start, end)
    return np.stack([(1 - t) * a + t * b for t in _times(num_frames)]).astype(np.float32)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from image ``a`` to image ``b`` (both (H, W, 3) in [0, 1]):
    ``a(x) ~ b(x + flow(x))``. Farneback, with a pyramid deep enough for the image size."""
    import cv2  # (OpenCV is an extra: only this baseline needs it)

    gray = [cv2.cvtColor((np.clip(x, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
            for x in (a, b)]
    levels = max(1, int(math.log2(max(1, min(a.shape[:2]) // 8))))
    return cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, pyr_scale=0.5, levels=levels,
                                        winsize=15, iterations=5, poly_n=5, poly_sigma=1.2,
                                        flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at x + flow(x) (backward warping, bilinear, edges replicated)."""
    import cv2

    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    flow = flow.astype(np.float32)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def flow(start, end, num_frames: int) -> np.ndarray:
    """Bidirectional optical-flow interpolation (see the module's notes)."""
    a, b = _pair(start, end)
    f01, f10 = optical_flow(a, b), optical_flow(b, a)
    frames = []
    for t in _times(num_frames):
        # Flow from time t to each keyframe, assuming straight motion (Super SloMo, eq. 4).
        ft0 = -(1 - t) * t * f01 + t * t * f10
        ft1 = (1 - t) * (1 - t) * f01 - t * (1 - t) * f10
        frame = (1 - t) * _warp(a, ft0) + t * _warp(b, ft1)
        frames.append(np.clip(frame, 0, 1))
    frames[0], frames[-1] = a, b
    return np.stack(frames).astype(np.float32)


BASELINES = {"flow": flow, "crossfade": crossfade}
