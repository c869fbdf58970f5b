"""What ``inbetween benchmark toy`` and ``benchmark make`` take (:func:`.sets.make_toy_set`,
:func:`.sets.make_video_set`): each option's range (see :func:`inbetweening.options.check_fields`)
and the bounds that keep a set within this machine's memory and disk. Torch-free, so that the
command line describes them at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..options import FRAMES_RANGE, SEED_RANGE, SIDE_RANGE, check_fields, parse_size
from ..utils import InbetweeningError

# inbetweening.toy.world.WORLDS, named without importing torch (a test holds them equal)
WORLD_NAMES = ("toy", "ambiguous")

# Drawing a toy clip holds about 800 bytes per pixel x frame (measured: 3.2 GB at its peak for
# 512x512 x 16 frames), and a toy set's PNG files take about 1.5 bytes per pixel on disk.
TOY_CLIP_WORK = 1 << 21  # pixels x frames of one toy clip: about 1.7 GB of memory
TOY_SET_WORK = 1 << 30  # pixels of a whole toy set, n x (frames + 2) x size^2: about 1.6 GB
VIDEO_CLIP_WORK = 1 << 27  # pixels x frames of one pair of a video set: 400 MB of RGB


@dataclass(frozen=True)
class ToySetOptions:
    n: int = field(default=16, metadata={"help": "number of pairs", "range": (1, 10_000)})
    seed: int | None = field(default=None, metadata={
        "help": "toy seed, at least the held-out seed 1000000 (default)", "range": SEED_RANGE})
    frames: int | None = field(default=None, metadata={
        "help": "frames per clip (default: the toy world's, 8)", "range": FRAMES_RANGE})
    size: tuple[int, int] | None = field(default=None, metadata={
        "help": f"WxH, square, multiple of 64 (default 64x64); size x size x frames at most "
                f"{TOY_CLIP_WORK:,} (about 1.7 GB of memory), and n x (frames + 2) x size x "
                f"size at most {TOY_SET_WORK:,} (about 1.6 GB of files)",
        "parse": parse_size, "range": (64, 512)})
    world: str = field(default="toy", metadata={
        "help": "toy or ambiguous (each vehicle slow or fast)", "choices": WORLD_NAMES})

    def check(self) -> "ToySetOptions":
        """Each option in its range; the size square, in multiples of 64; returns self."""
        check_fields(self)
        if self.size is not None and (self.size[0] != self.size[1] or self.size[0] % 64):
            raise InbetweeningError(f"toy clips are square, in multiples of 64: give --size like "
                                    f"64x64, not {self.size[0]}x{self.size[1]}")
        return self


def check_toy_work(n: int, frames: int, size: int) -> None:
    """Refuse a toy set this machine cannot hold: a clip over TOY_CLIP_WORK pixels x frames (the
    memory it is drawn in), or a set over TOY_SET_WORK pixels (the disk it takes)."""
    if frames * size * size > TOY_CLIP_WORK:
        raise InbetweeningError(f"toy clips of {size}x{size} x {frames} frames are too large: at "
                                f"most {TOY_CLIP_WORK:,} pixels x frames (about 1.7 GB of memory "
                                "while one is drawn); use a smaller size or fewer frames")
    if n * (frames + 2) * size * size > TOY_SET_WORK:
        raise InbetweeningError(f"{n} toy pairs of {size}x{size} x {frames} frames are too many: "
                                f"at most {TOY_SET_WORK:,} pixels in all (about 1.6 GB of files); "
                                "use fewer pairs, a smaller size or fewer frames")


@dataclass(frozen=True)
class VideoSetOptions:
    gap: int = field(default=25, metadata={
        "help": "frames between the keyframes", "range": (2, 10_000)})
    pairs_per_video: int = field(default=1, metadata={
        "help": "pairs taken from each video, spread over it", "range": (1, 1000)})
    frames: int | None = field(default=None, metadata={
        "help": "frames of the true clip, keyframes included (default: the model's)",
        "range": FRAMES_RANGE})
    size: tuple[int, int] | None = field(default=None, metadata={
        "help": f"WxH, multiples of 64 (default: the model's); width x height x frames at most "
                f"{VIDEO_CLIP_WORK:,} (a clip's 400 MB in memory)",
        "parse": parse_size, "range": SIDE_RANGE})

    def check(self) -> "VideoSetOptions":
        return check_fields(self)


def check_video_work(frames: int, width: int, height: int) -> None:
    """Refuse true clips over VIDEO_CLIP_WORK pixels x frames (each is held in memory)."""
    if frames * width * height > VIDEO_CLIP_WORK:
        raise InbetweeningError(f"true clips of {width}x{height} x {frames} frames are too large: "
                                f"at most {VIDEO_CLIP_WORK:,} pixels x frames (400 MB in memory); "
                                "use a smaller size or fewer frames")
