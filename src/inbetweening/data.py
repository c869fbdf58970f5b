"""Training clips from a folder of videos: what ``inbetween train`` learns from.

A data folder holds videos (``.mp4 .webm .gif .mov .mkv .avi``) and/or frame folders (a folder of
images, in name order, is one video), at any depth. From each video, clips of ``num_frames``
frames are taken ``stride`` frames apart (the published recipe: 14 frames at stride 2, i.e. from
27 consecutive frames): item ``i`` is one of the non-overlapping windows from the start (what
``inbetween train --clips fixed`` cycles through), and :meth:`ClipDataset.window` is the window
at any start (``--clips random``, the default, draws one per sample, as the published training
does). Each frame is resized to cover the training size and centre-cropped to it. Videos too
short for one clip and files that cannot be read are skipped and counted; a folder with no usable
clip is an error that says why.

Videos are decoded when a clip is asked for (frame folders: only the frames it uses), so a large
data set costs no memory up front.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from . import media
from .utils import InbetweeningError, check_regular_file

IMAGE_SUFFIXES = media.IMAGE_SUFFIXES


def _natural_key(path: Path):
    """frame_2.png before frame_10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to cover ``size`` = (width, height), then centre-crop."""
    w, h = size
    fh, fw = frame.shape[:2]
    if (fw, fh) == (w, h):
        return frame
    scale = max(w / fw, h / fh)
    rw, rh = max(w, round(fw * scale)), max(h, round(fh * scale))
    im = PIL.Image.fromarray(frame).resize((rw, rh), PIL.Image.LANCZOS)
    left, top = (rw - w) // 2, (rh - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)))


@dataclass(frozen=True)
class Source:
    """One video: a file, or a folder of frame images (``files``)."""

    path: Path
    frames: int
    files: tuple[Path, ...] = ()  # frame images, for a frame folder

    @property
    def is_folder(self) -> bool:
        return bool(self.files)


@dataclass
class ScanReport:
    """What a data folder held: usable sources, and what was skipped and why."""

    root: Path
    sources: list[Source] = field(default_factory=list)
    too_short: list[tuple[Path, int]] = field(default_factory=list)  # (path, frames)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)

    def skipped(self) -> str:
        parts = []
        if self.too_short:
            parts.append(f"{len(self.too_short)} too short")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable (e.g. {self.unreadable[0][1]})")
        return ", ".join(parts)


def find_sources(root: Path) -> tuple[list[Path], list[list[Path]]]:
    """Video files and frame folders (as their sorted image files) under ``root``."""
    if root.is_file():
        return [root], []
    videos, folders, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        if here.resolve() in seen:  # a link back up the tree
            dirnames.clear()
            continue
        seen.add(here.resolve())
        dirnames.sort()
        files = sorted((here / f for f in filenames), key=_natural_key)
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            folders.append(images)
        videos += [f for f in files if f.suffix.lower() in media.READABLE_VIDEOS]
    return videos, folders


def scan(root: str | os.PathLike, span: int) -> ScanReport:
    """Find the videos under ``root`` and keep those with at least ``span`` readable frames."""
    root = Path(root)
    if not root.exists():
        raise InbetweeningError(f"data folder not found: {root}")
    report = ScanReport(root)
    videos, folders = find_sources(root)
    for images in folders:
        try:
            for f in images:  # headers only: cheap, and catches files that are not images
                with PIL.Image.open(check_regular_file(f, "an image")):
                    pass
        except (OSError, InbetweeningError, PIL.UnidentifiedImageError,
                PIL.Image.DecompressionBombError):
            report.unreadable.append((images[0].parent, f"{f.name} is not an image"))
            continue
        source = Source(images[0].parent, len(images), tuple(images))
        _keep(report, source, span)
    for path in videos:
        try:
            frames, _ = media.read_video(path)
        except InbetweeningError as e:
            report.unreadable.append((path, str(e)))
            continue
        _keep(report, Source(path, len(frames)), span)
    report.sources.sort(key=lambda s: str(s.path))
    return report


def _keep(report: ScanReport, source: Source, span: int) -> None:
    if source.frames < span:
        report.too_short.append((source.path, source.frames))
    else:
        report.sources.append(source)


class ClipDataset(torch.utils.data.Dataset):
    """Clips of ``num_frames`` frames at ``stride`` from the videos under ``root``, at ``size``
    (width, height). Item ``i`` is an (F, 3, H, W) float tensor in [-1, 1]."""

    def __init__(self, root: str | os.PathLike, num_frames: int, size: tuple[int, int],
                 stride: int = 2):
        if num_frames < 2:
            raise InbetweeningError(f"a training clip needs at least 2 frames, not {num_frames}")
        if stride < 1:
            raise InbetweeningError(f"--stride must be at least 1, not {stride}")
        self.root, self.num_frames, self.stride = Path(root), num_frames, stride
        self.size = tuple(size)
        self.span = (num_frames - 1) * stride + 1  # consecutive frames one clip covers
        self.report = scan(self.root, self.span)
        if not self.report.sources:
            raise InbetweeningError(self._nothing_usable())
        self.clips = [(i, start) for i, s in enumerate(self.report.sources)
                      for start in range(0, s.frames - self.span + 1, self.span)]
        self._frames = lru_cache(maxsize=2)(self._decode)

    def _nothing_usable(self) -> str:
        r = self.report
        if not r.too_short and not r.unreadable:
            return (f"no videos or frame folders in {self.root} (looked for "
                    f"{' '.join(media.READABLE_VIDEOS)} files and folders of images)")
        msg = f"no usable video in {self.root}: {r.skipped()}"
        if r.too_short:
            longest = max(n for _, n in r.too_short)
            msg += (f"; a clip of {self.num_frames} frames at stride {self.stride} needs "
                    f"{self.span} frames, the longest has {longest}")
            fit = (longest - 1) // (self.num_frames - 1) if longest > 1 else 0
            if 1 <= fit < self.stride:
                msg += f" (try --stride {fit})"
        return msg

    def summary(self) -> str:
        r = self.report
        text = (f"{len(self.clips)} clips of {self.num_frames} frames (stride {self.stride}) "
                f"from {len(r.sources)} videos in {self.root}")
        if r.skipped():
            text += f"; skipped {r.skipped()}"
        return text

    def __len__(self) -> int:
        return len(self.clips)

    def describe(self, index: int) -> str:
        source, start = self.clips[index]
        return f"{self.report.sources[source].path} frames {start}..{start + self.span - 1}"

    def _decode(self, source_index: int) -> np.ndarray:
        """All frames of a video file at the training size (kept for the next clip of it)."""
        frames, _ = media.read_video(self.report.sources[source_index].path)
        return np.stack([fit_frame(f, self.size) for f in frames])

    @property
    def videos(self) -> int:
        """How many videos (sources) the clips come from."""
        return len(self.report.sources)

    def starts(self, source_index: int) -> int:
        """How many windows video ``source_index`` has (starts 0 .. frames - span)."""
        return self.report.sources[source_index].frames - self.span + 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.window(*self.clips[index])

    def window(self, source_index: int, start: int) -> torch.Tensor:
        """The clip of video ``source_index`` from frame ``start``: (F, 3, H, W) in [-1, 1]."""
        source = self.report.sources[source_index]
        if source.is_folder:  # read only the frames this clip uses
            files = source.files[start:start + self.span:self.stride]
            frames = [fit_frame(np.asarray(media.read_image(f)), self.size) for f in files]
        else:
            frames = self._frames(source_index)[start:start + self.span:self.stride]
        if len(frames) != self.num_frames:  # the video changed since the scan
            raise InbetweeningError(f"{source.path} frames {start}..{start + self.span - 1}: the "
                                    "video has fewer frames than when it was scanned")
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
        return video.float() / 127.5 - 1.0
