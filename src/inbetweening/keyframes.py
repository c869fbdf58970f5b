"""Videos through several keyframes: one inbetween segment per neighbouring pair, joined so that
the shared boundary frames are not doubled; ``loop`` closes the sequence back on its first frame.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import PIL.Image
import torch

from .utils import InbetweeningError


def segment_pairs(count: int, loop: bool) -> list[tuple[int, int]]:
    """Index pairs of the segments through ``count`` keyframes."""
    if count < 2 and not (loop and count == 1):
        raise InbetweeningError("give at least two keyframes (or one with --loop)")
    pairs = [(i, i + 1) for i in range(count - 1)]
    if loop:
        pairs.append((count - 1, 0))
    return pairs


def keyframe_indices(count: int, num_frames: int, loop: bool) -> list[int]:
    """Where each keyframe lands in the joined video (a looped video ends one frame before the
    first keyframe comes round again)."""
    step = num_frames - 1
    return [i * step for i in range(count)]


def join_segments(segments: list[np.ndarray], loop: bool) -> np.ndarray:
    """Join (F, H, W, 3) segments, dropping each segment's first frame after the first one (it is
    the previous segment's last) and, for a loop, the final frame (it is the first keyframe)."""
    parts = [segments[0]] + [s[1:] for s in segments[1:]]
    video = np.concatenate(parts)
    return video[:-1] if loop else video


def inbetween_sequence(pipe, keyframes: list, *, loop: bool = False,
                       generator: torch.Generator | None = None,
                       on_segment: Callable[[int, int], None] | None = None,
                       **kwargs) -> np.ndarray:
    """One video through all ``keyframes`` (PIL images, arrays or tensors), as an
    (F, H, W, 3) float array in [0, 1]. ``kwargs`` go to the pipeline call of each segment; the
    segments draw their noise from ``generator`` one after another, so a seed gives the same
    video. ``on_segment(i, n)`` is called before segment i of n."""
    pairs = segment_pairs(len(keyframes), loop)
    kwargs = {**kwargs, "output_type": "np"}
    segments = []
    for i, (a, b) in enumerate(pairs):
        if on_segment is not None:
            on_segment(i, len(pairs))
        out = pipe(keyframes[a], keyframes[b], generator=generator, **kwargs).frames
        segments.append(np.asarray(out[0]))
    return join_segments(segments, loop)


def to_uint8(video: np.ndarray) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8)) for f in video]
