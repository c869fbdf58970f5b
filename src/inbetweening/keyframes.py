"""Videos through several keyframes: one inbetween segment per neighbouring pair, joined so that
the shared boundary frames are not doubled.

A *closed* sequence is a seamless loop: its last frame leads back to its first. It is closed when
``loop`` is asked for (a last segment goes from the last keyframe back to the first) or when the
same image is given first and last (no extra segment is needed). The frame that would repeat the
first keyframe at the end is dropped, so the video can play on repeat without a stutter.

With ``F`` frames per segment, keyframe ``k`` lands at frame ``k * (F - 1)`` of the video.

:func:`interpolate` is how ``inbetween interpolate`` (and ``inbetween render``, shot by shot) turns
keyframes, sampling options and a seed into a video: one function, so that every front end makes
the same frames for the same settings and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import media
from .capacity import check_work
from .inputs import check_aspects, same_image, to_pil
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
                       generator=None,
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


def check_keyframes(keyframes: list, loop: bool = False) -> Layout:
    """Refuse, before any model is loaded, too few keyframes and keyframes of different aspect
    ratios; returns the sequence's layout. ``keyframes``: images, arrays or tensors."""
    plan = layout(keyframes, loop)
    check_aspects([k if hasattr(k, "width") else to_pil(k) for k in keyframes])
    return plan


def check_options(pipe, options: SamplingOptions, image=None) -> dict:
    """The settings a call of ``options`` runs with on this model (as :func:`interpolate` makes
    it; ``image``: the first keyframe, whose shape picks an SVD model's orientation), refused
    before any sampling when the model cannot take them (frame count, size, steps, a method that
    needs backward weights the model does not have) or the machine cannot sample them
    (:func:`inbetweening.capacity.check_work`)."""
    from .backward import loaded_variant
    from .methods import method

    s, _ = pipe.call_settings(image=image, **options.check().call_kwargs())
    if method(s["method"]).needs_backward_weights and loaded_variant(pipe.unet) is None:
        raise InbetweeningError(f"method {s['method']!r} needs backward weights (--backward "
                                "FILE, or a model folder with backward.safetensors)")
    pipe.check_inputs(s["height"], s["width"], s["num_frames"], s["method"],
                      s["num_inference_steps"], s["sampler"], s["reinject_at"])
    check_work(pipe, s)  # the size x frames this machine can sample
    return s


@dataclass(frozen=True)
class Video:
    """A video made by :func:`interpolate`: ``frames`` (F, H, W, 3) float in [0, 1], the frame
    rate to play it at, and the UNet predictions it took (all segments)."""

    frames: np.ndarray
    fps: int
    predictions: int


def interpolate(pipe, keyframes: list, options: SamplingOptions | None = None, *, seed,
                loop: bool = False, side_by_side: bool = False,
                on_segment: Callable[[int, int], None] | None = None, **call) -> Video:
    """The video through ``keyframes`` as ``inbetween interpolate`` makes it: the pipeline call of
    ``options`` (the pipeline resolves what they leave unset: ``pipe.call_settings``), every
    segment's noise from one generator seeded with ``seed`` (or from ``seed`` itself, a generator
    that several videos draw from in turn); with ``side_by_side`` the first and
    last keyframes are shown beside each frame. ``call``: more pipeline arguments (e.g.
    ``callback_on_step_end``)."""
    import torch

    options = (options or SamplingOptions()).check()
    kw = options.call_kwargs()
    settings, _ = pipe.call_settings(image=keyframes[0], **kw)
    generator = (seed if isinstance(seed, torch.Generator)
                 else torch.Generator().manual_seed(check_seed(seed)))
    segments = len(layout(keyframes, loop).pairs)
    frames = inbetween_sequence(pipe, keyframes, loop=loop, generator=generator,
                                on_segment=on_segment, **kw, **call)
    predictions = pipe.num_predictions * segments
    if side_by_side:
        frames = media.side_by_side(frames, [to_pil(keyframes[0]), to_pil(keyframes[-1])])
    return Video(frames=frames, fps=settings["fps"], predictions=predictions)
