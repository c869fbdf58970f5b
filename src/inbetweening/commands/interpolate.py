"""``inbetween interpolate``: the video between two (or more) keyframes."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from ..options import SEED_RANGE, check_seed, describe_range
from ..utils import InbetweeningError
from .common import add_model_args, add_sampling_args, sampling_options


def pick_seed(seed: int | None) -> int:
    """``seed`` checked; without one, a random seed that is printed."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31 - 1)
        print(f"seed {seed}")
    return check_seed(seed)


def output_paths(output: str, count: int) -> list[Path]:
    """Where the videos of one run go: ``OUT`` itself for one video; ``OUT-1``, ``OUT-2`` ...
    (before the suffix) for several."""
    if not 1 <= count <= 100:
        raise InbetweeningError(f"--num-videos must be between 1 and 100, not {count}")
    if count == 1 or not str(output):  # (an empty path is refused by media.check_output)
        return [output]
    path = Path(output)
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]


def run(args) -> None:
    # Everything that needs no model is checked before torch and diffusers are imported, so a
    # mistake is answered at once.
    from .. import media
    from ..keyframes import check_keyframes, check_options, interpolate
    from ..locate import check_backward, model_inputs

    options = sampling_options(args)
    if args.seed is not None:
        check_seed(args.seed)
    check_backward(args.backward)
    inputs = [*args.keyframes, *model_inputs(args.model, args.backward)]
    outputs = output_paths(args.output, args.num_videos)
    for out in outputs:
        media.check_output(out, args.overwrite, inputs)
    images = [media.read_image(p) for p in args.keyframes]
    check_keyframes(images, args.loop)
    import torch

    from ..loading import load_pipeline

    pipe = load_pipeline(args.model, args.backward, args.device, args.dtype,
                         compile=args.compile, memory=args.memory)
    check_options(pipe, options, images[0])
    for note in pipe.call_settings(image=images[0], **options.call_kwargs())[1]:
        print(f"note: {note}", file=sys.stderr)
    generator = torch.Generator().manual_seed(pick_seed(args.seed))

    def on_segment(i, n):
        if n > 1:
            print(f"segment {i + 1}/{n}")

    for out in outputs:  # the videos draw their noise from one generator, one after another
        t0 = time.time()
        video = interpolate(pipe, images, options, seed=generator, loop=args.loop,
                            side_by_side=args.side_by_side, on_segment=on_segment)
        media.write_video(video.frames, out, fps=video.fps, overwrite=args.overwrite,
                          inputs=inputs)
        h, w = video.frames.shape[1:3]
        print(f"wrote {out} ({len(video.frames)} frames, {w}x{h}, {time.time() - t0:.1f} s)")


def add_command(sub) -> None:
    p = sub.add_parser("interpolate", help="the video between two (or more) keyframes",
                       description="Generate the video between keyframes (one segment per "
                                   "neighbouring pair).")
    p.add_argument("keyframes", nargs="+", metavar="KEYFRAME", help="images, in order")
    p.add_argument("-o", "--output", required=True,
                   help="OUT.mp4, OUT.gif, OUT.webp, or a folder name for PNG frames")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--loop", action="store_true", help="go back to the first keyframe at the end")
    p.add_argument("--side-by-side", action="store_true",
                   help="show the keyframes beside the video")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=None,
                   help=f"random seed, {describe_range(*SEED_RANGE)} (printed when not given)")
    p.add_argument("--num-videos", type=int, default=1,
                   help="videos to make (default 1), written as OUT-1, OUT-2 ...; the first is "
                        "the video of a one-video run with the same seed")
    p.set_defaults(func=run)
