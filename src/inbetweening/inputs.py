"""Keyframes as the pipeline takes them: PIL images, arrays or tensors, one or a batch, in pairs,
of one aspect ratio, and one generator per video. Imports no deep-learning library (a tensor can
only be given where torch is already imported), so commands can check keyframes before loading
anything."""

from __future__ import annotations

import sys

import numpy as np
import PIL.Image

from .utils import InbetweeningError


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_pil(image) -> PIL.Image.Image:
    """A keyframe as an RGB PIL image. Arrays are (H, W, 3) uint8 or float in [0, 1]; tensors
    are (3, H, W) in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if _is_tensor(image):
        if image.ndim != 3 or image.shape[0] not in (3, 4):
            raise InbetweeningError("a keyframe tensor must be (3, H, W), or (B, 3, H, W) for a "
                                    f"batch, not {tuple(image.shape)}")
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise InbetweeningError(f"a keyframe array must be (H, W, 3), not {image.shape}")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return PIL.Image.fromarray(image[..., :3])
    raise InbetweeningError(f"a keyframe must be a PIL image, array or tensor, not {type(image)}")


def keyframe_batch(images) -> list[PIL.Image.Image]:
    """Keyframes as RGB PIL images: one keyframe (see :func:`to_pil`), a batch ((B, 3, H, W)
    tensor in [0, 1], (B, H, W, 3) array) or a list of keyframes."""
    batch = (_is_tensor(images) or isinstance(images, np.ndarray)) and images.ndim == 4
    if batch or isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise InbetweeningError("an empty batch of keyframes")
    return [to_pil(im) for im in items]


def keyframe_pairs(start_image, end_image) -> list[tuple]:
    """(start, end) PIL keyframes of each prompt; ``end`` is None without an end image. A batch
    of one start or end keyframe goes with every keyframe of the other batch."""
    starts = keyframe_batch(start_image)
    ends = keyframe_batch(end_image) if end_image is not None else [None]
    n = max(len(starts), len(ends))
    if {len(starts), len(ends)} - {1, n}:
        raise InbetweeningError(f"{len(starts)} start and {len(ends)} end keyframes: give as "
                                "many of each, or one of either")
    return [(starts[i % len(starts)], ends[i % len(ends)]) for i in range(n)]


def check_aspects(images: list[PIL.Image.Image], tolerance: float = 0.02) -> None:
    """Keyframes of different aspect ratios are refused: no crop would frame both alike."""
    ratios = [im.width / im.height for im in images]
    if max(ratios) / min(ratios) > 1 + tolerance:
        sizes = ", ".join(f"{im.width}x{im.height}" for im in images)
        raise InbetweeningError(f"keyframes have different aspect ratios ({sizes}); crop them to "
                                "the same shape first")


def video_generators(generator, videos: int) -> list:
    """One generator per video. A list must hold exactly one per video; a single generator (or
    None) serves every video in turn, so the first video equals a one-video run."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != videos:
            raise InbetweeningError(f"{len(generator)} generators for {videos} videos: give one "
                                    "per video, or a single generator")
        return list(generator)
    return [generator] * videos


def video_inputs(start_image, end_image, num_videos_per_prompt: int, generator):
    """Keyframe pairs (end None for one-direction methods) and generators, one per video:
    ``num_videos_per_prompt`` videos per pair, in order. Pairs of other aspect ratios are
    refused."""
    pairs = keyframe_pairs(start_image, end_image)
    for pair in pairs:
        check_aspects([k for k in pair if k is not None])
    pairs = [p for p in pairs for _ in range(num_videos_per_prompt)]
    return pairs, video_generators(generator, len(pairs))


def same_image(a, b) -> bool:
    """Whether two keyframes have the same pixels (then a sequence from one to the other is a
    loop)."""
    a, b = np.asarray(to_pil(a)), np.asarray(to_pil(b))
    return a.shape == b.shape and bool((a == b).all())
