"""Videos through several keyframes: one inbetween segment per neighbouring pair, joined so that
the shared boundary frames are not doubled.

A *closed* sequence is a seamless loop: its last frame leads back to its first. It is closed when
``loop`` is asked for (a last segment goes from the last keyframe back to the first) or when the
same image is given first and last (no extra segment is needed). The frame that would repeat the
first keyframe at the end is dropped, so the video can play on repeat without a stutter.

With ``F`` frames per segment, keyframe ``k`` lands at frame ``k * (F - 1)`` of the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .options import SamplingOptions, check_seed
from .utils import InbetweeningError


def segment_pairs(count: int, loop: bool) -> list[tuple[int, int]]:
    """Index pairs of the segments through ``count`` keyframes."""
    if count < 2 and not (loop and count == 1):
        raise InbetweeningError("give at least two keyframes (or one with --loop)")
    pairs = [(i, i + 1) for i in range(count - 1)]
    if loop:
        pairs.append((count - 1, 0))
    return pairs


def join_segments(segments: list[np.ndarray], loop: bool) -> np.ndarray:
    """Join (F, H, W, 3) segments, dropping each segment's first frame after the first one (it is
    the previous segment's last) and, for a loop, the final frame (it is the first keyframe)."""
    parts = [segments[0]] + [s[1:] for s in segments[1:]]
    video = np.concatenate(parts)
    return video[:-1] if loop else video


def same_image(a, b) -> bool:
    """Whether two keyframes have the same pixels (then a sequence from one to the other is a
    loop)."""
    from .pipeline import to_pil

    a, b = np.asarray(to_pil(a)), np.asarray(to_pil(b))
    return a.shape == b.shape and bool((a == b).all())


@dataclass(frozen=True)
class Layout:
    """How a sequence of keyframes becomes one video.

    ``pairs``: the (start, end) keyframe indices of each segment. ``closed``: the video is a
    seamless loop (its final frame, a repeat of the first, is dropped)."""

    count: int
    pairs: list[tuple[int, int]]
    closed: bool

    def length(self, num_frames: int) -> int:
        """Frames of the joined video, with ``num_frames`` frames per segment."""
        return len(self.pairs) * (num_frames - 1) + (0 if self.closed else 1)

    def keyframe_index(self, k: int, num_frames: int) -> int:
        """The frame of the joined video that is keyframe ``k`` (a closing keyframe equal to the
        first one is frame 0)."""
        return (k * (num_frames - 1)) % self.length(num_frames)


def layout(keyframes: list, loop: bool = False) -> Layout:
    """The segments through ``keyframes``; see the module's docstring for loops."""
    count = len(keyframes)
    closed_by_images = count >= 2 and same_image(keyframes[0], keyframes[-1])
    pairs = segment_pairs(count, loop and not closed_by_images)
    return Layout(count=count, pairs=pairs, closed=loop or closed_by_images)


def inbetween_sequence(pipe, keyframes: list, *, loop: bool = False,
                       generator: torch.Generator | None = None,
                       on_segment: Callable[[int, int], None] | None = None,
                       **kwargs) -> np.ndarray:
    """One video through all ``keyframes`` (PIL images, arrays or tensors), as an
    (F, H, W, 3) float array in [0, 1]. ``kwargs`` go to the pipeline call of each segment; the
    segments draw their noise from ``generator`` one after another, so a seed gives the same
    video. ``on_segment(i, n)`` is called before segment i of n. A sequence whose first and last
    keyframes are the same image, or ``loop=True``, gives a seamless loop."""
    plan = layout(keyframes, loop)
    kwargs = {**kwargs, "output_type": "np"}
    segments = []
    for i, (a, b) in enumerate(plan.pairs):
        if on_segment is not None:
            on_segment(i, len(plan.pairs))
        out = pipe(keyframes[a], keyframes[b], generator=generator, **kwargs).frames
        segments.append(np.asarray(out[0]))
    return join_segments(segments, plan.closed)



def interpolate_keyframes(pipe, keyframes: list, options: SamplingOptions, seed: int, *,
                          loop: bool = False,
                          on_segment: Callable[[int, int], None] | None = None,
                          **call) -> tuple[np.ndarray, dict]:
    """The video through ``keyframes`` exactly as ``inbetween interpolate`` makes it: the
    pipeline arguments of ``options`` (checked) over the model's recommendations
    (``pipe.defaults``), every draw from a CPU generator seeded with ``seed``, segments joined by
    :func:`inbetween_sequence`. ``call``: more pipeline arguments (``callback_on_step_end``,
    ``motion_bucket_id`` ...), over those. Every front end that promises the CLI's frames (the
    ComfyUI nodes) calls this. Returns the (F, H, W, 3) video in [0, 1] and the arguments of
    each segment's call (``fps`` among them)."""
    kw = options.check().call_kwargs(pipe.defaults)
    generator = torch.Generator().manual_seed(check_seed(seed))
    video = inbetween_sequence(pipe, keyframes, loop=loop, generator=generator,
                               on_segment=on_segment, **{**kw, **call})
    return video, kw
