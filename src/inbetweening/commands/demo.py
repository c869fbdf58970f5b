"""``inbetween demo``: the method on held-out toy clips, beside the truth and the baselines
(see :mod:`inbetweening.demo`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..options import STEPS_RANGE
from .args import add_dataclass_args, from_args
from .common import add_model_args


@dataclass
class DemoSettings:
    """The demo's own options (their ranges checked by options.check_fields)."""

    pairs: int = field(default=3, metadata={"help": "keyframe pairs", "range": (1, 100)})
    steps: int | None = field(default=None, metadata={
        "help": "denoising steps (default: model's)", "range": STEPS_RANGE})
    seed: int = field(default=0, metadata={  # (pair i is sampled with seed + i)
        "help": "sampling seed", "range": (0, 2**63 - 1)})


def run(args) -> None:
    from pathlib import Path

    from ..locate import check_backward, model_inputs
    from ..utils import check_target

    settings = from_args(DemoSettings, args)
    check_backward(args.backward)  # (what needs no model, before torch is imported)
    check_target(args.output, args.overwrite, folder=True,
                 inputs=model_inputs(args.model, args.backward))
    from ..demo import run_demo
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model, args.backward, args.device, args.dtype,
                         compile=args.compile, memory=args.memory)
    pipe.set_progress_bar_config(disable=True)
    kw = {}
    if settings.steps is not None:
        kw["num_inference_steps"] = settings.steps
    run_demo(pipe, Path(args.output), pairs=settings.pairs, seed=settings.seed,
             overwrite=args.overwrite, call_kwargs=kw)


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
    add_dataclass_args(p, DemoSettings)
    add_model_args(p)
    p.set_defaults(func=run)
