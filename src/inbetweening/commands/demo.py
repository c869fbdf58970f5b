"""``inbetween demo``: the method on held-out toy clips, beside the truth and the baselines
(see :mod:`inbetweening.demo`)."""

from __future__ import annotations

from .common import add_model_args


def run(args) -> None:
    from pathlib import Path

    from ..demo import run_demo
    from ..loading import load_pipeline
    from ..utils import check_target

    check_target(args.output, args.overwrite, folder=True)
    pipe = load_pipeline(args.model, args.backward, args.device, args.dtype,
                         compile=args.compile, memory=args.memory)
    pipe.set_progress_bar_config(disable=True)
    kw = {}
    if args.steps is not None:
        kw["num_inference_steps"] = args.steps
    run_demo(pipe, Path(args.output), pairs=args.pairs, seed=args.seed, overwrite=args.overwrite,
             call_kwargs=kw)


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="the method on held-out toy clips, beside the truth",
                       description="For a few held-out clips of the toy world, the first and "
                                   "last frames are the keyframes; gi (the paper), trf "
                                   "(time-reversal fusion) and plain forward SVD generate the "
                                   "frames between, and the demo writes each video, a "
                                   "side-by-side comparison with the true clip (GIF and MP4), a "
                                   "PNG contact sheet, and the tracker's metrics (metrics.md).")
    p.add_argument("-o", "--output", default="out/demo", help="folder to write (default out/demo)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--pairs", type=int, default=3, help="keyframe pairs (default 3)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: model's)")
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    p.set_defaults(func=run)
