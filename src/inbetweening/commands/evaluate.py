"""``inbetween benchmark make | toy`` and ``inbetween evaluate`` (see
:mod:`inbetweening.evaluation`)."""

from __future__ import annotations

from ..evaluation import ALL_METHODS, DEFAULT_METHODS
from ..evaluation.set_options import ToySetOptions, VideoSetOptions
from ..options import SEED_RANGE, describe_range
from .args import add_dataclass_args, from_args
from .common import add_model_args, add_sampling_args, sampling_options


def benchmark_make(args) -> None:
    from ..evaluation import make_video_set

    options = from_args(VideoSetOptions, args).check()
    out, counts = make_video_set(args.videos, args.out, gap=options.gap,
                                 pairs_per_video=options.pairs_per_video, frames=options.frames,
                                 size=options.size, model=args.model, overwrite=args.overwrite)
    print(f"wrote {out}: {counts['pairs']} pairs from {counts['videos']} videos "
          f"({counts['unreadable']} unreadable, {counts['too_short']} too short, skipped)")


def benchmark_toy(args) -> None:
    from ..evaluation import make_toy_set

    options = from_args(ToySetOptions, args).check()
    out = make_toy_set(args.out, options.n, options.seed, frames=options.frames,
                       size=options.size[0] if options.size else None, world_name=options.world,
                       overwrite=args.overwrite)
    print(f"wrote {out}: {options.n} held-out toy pairs")


def run_evaluate(args) -> None:
    from pathlib import Path

    from ..evaluation import evaluate

    options = sampling_options(args, method="gi", frames=None, size=None)
    result = evaluate(args.set, args.methods, args.out, model=args.model, backward=args.backward,
                      device=args.device, dtype=args.dtype, seed=args.seed, options=options,
                      lpips=args.lpips_weights, inception=args.inception_weights,
                      fvd=args.fvd_weights, overwrite=args.overwrite, compile=args.compile,
                      memory=args.memory)
    if result is not None:
        print((Path(args.out) / "metrics.md").read_text())


def add_command(sub) -> None:
    bench = sub.add_parser("benchmark", help="make keyframe-pair sets for `inbetween evaluate`",
                           description="Make a benchmark set: keyframe pairs with the true clip "
                                       "between them, and a readable manifest.json.")
    bsub = bench.add_subparsers(dest="benchmark_command", required=True, metavar="KIND")
    make = bsub.add_parser("make", help="pairs from a folder of videos (as the paper's "
                                        "DAVIS/Pexels pairs)")
    make.add_argument("--videos", required=True, help="folder of videos (mp4, webm, gif, mov, "
                                                      "mkv, avi) or of frame folders")
    make.add_argument("--out", required=True, help="set folder to write")
    add_dataclass_args(make, VideoSetOptions)
    make.add_argument("--model", default=None, help="model whose frame count and size to use "
                                                    "(default: the bundled toy model)")
    make.add_argument("--overwrite", action="store_true")
    make.set_defaults(func=benchmark_make)

    toy = bsub.add_parser("toy", help="held-out toy clips with ground-truth tracks")
    toy.add_argument("--out", required=True, help="set folder to write")
    add_dataclass_args(toy, ToySetOptions)
    toy.add_argument("--overwrite", action="store_true")
    toy.set_defaults(func=benchmark_toy)

    ev = sub.add_parser(
        "evaluate", help="run methods on a benchmark set; metrics, table and plots",
        description="Run every method on every pair of SET and compare with the true clips. "
                    "Resumable: finished pairs are kept in --out and not redone. Several "
                    "processes share the pairs under `accelerate launch --multi_gpu "
                    "--num_processes N -m inbetweening.cli evaluate ...` (GPUs or CPU) or "
                    "`torchrun --nproc-per-node N -m inbetweening.cli evaluate ...`.",
        epilog="LPIPS, FID and FVD need feature networks on disk, as TorchScript files: "
               "--lpips-weights vgg16.pt (NVIDIA's LPIPS VGG16) or a scripted lpips.LPIPS; "
               "--inception-weights inception-2015-12-05.pt (the FID Inception); --fvd-weights "
               "i3d_torchscript.pt (StyleGAN-V's I3D) or a TorchScript export of VideoMAE-v2 "
               "features (the content-debiased FVD). Without them those columns are skipped.")
    ev.add_argument("set", metavar="SET", help="benchmark set folder (with manifest.json)")
    ev.add_argument("--methods", default=DEFAULT_METHODS,
                    help=f"comma-separated, from {', '.join(ALL_METHODS)}, or all (default: "
                         f"{DEFAULT_METHODS})")
    ev.add_argument("--out", required=True, help="results folder")
    ev.add_argument("--overwrite", action="store_true",
                    help="discard results already in --out and start afresh")
    add_model_args(ev)
    ev.add_argument("--seed", type=int, default=0,
                    help=f"base seed ({describe_range(*SEED_RANGE)}); each pair gets its own seed "
                         "from it and the pair's id (default 0)")
    add_sampling_args(ev, skip=("method", "frames", "size"))
    ev.add_argument("--lpips-weights", default=None, help="LPIPS network (TorchScript)")
    ev.add_argument("--inception-weights", default=None, help="FID Inception (TorchScript)")
    ev.add_argument("--fvd-weights", default=None, help="FVD video network (TorchScript)")
    ev.set_defaults(func=run_evaluate)
