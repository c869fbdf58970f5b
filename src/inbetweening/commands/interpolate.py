"""``inbetween interpolate``: the video between two (or more) keyframes."""

from __future__ import annotations

import time

from ..options import check_seed
from .common import add_model_args, add_sampling_args, sampling_options


def seed_generator(seed: int | None):
    """A generator seeded with ``seed``; without one, a random seed that is printed."""
    import torch

    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        print(f"seed {seed}")
    return torch.Generator().manual_seed(check_seed(seed))


def run(args) -> None:
    from .. import media
    from ..keyframes import inbetween_sequence, layout
    from ..loading import load_pipeline
    from ..pipeline import check_aspects

    options = sampling_options(args)
    if args.seed is not None:
        check_seed(args.seed)
    media.check_output(args.output, args.overwrite, args.keyframes)
    images = [media.read_image(p) for p in args.keyframes]
    layout(images, args.loop)  # too few keyframes: refused before the model is loaded
    check_aspects(images)
    pipe = load_pipeline(args.model, args.backward, args.device, args.dtype,
                         compile=args.compile, memory=args.memory)
    kw = options.call_kwargs(pipe.defaults)
    generator = seed_generator(args.seed)
    t0 = time.time()

    def on_segment(i, n):
        if n > 1:
            print(f"segment {i + 1}/{n}")

    video = inbetween_sequence(pipe, images, loop=args.loop, generator=generator,
                               on_segment=on_segment, **kw)
    if args.side_by_side:
        video = media.side_by_side(video, images)
    media.write_video(video, args.output, fps=kw["fps"], overwrite=args.overwrite,
                      inputs=args.keyframes)
    h, w = video.shape[1:3]
    print(f"wrote {args.output} ({len(video)} frames, {w}x{h}, {time.time() - t0:.1f} s)")


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
    p.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    p.set_defaults(func=run)
