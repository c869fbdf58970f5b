"""The ``inbetween`` command line.

    inbetween interpolate START END -o video.mp4        # the video between two keyframes
    inbetween interpolate K1 K2 K3 --loop -o loop.gif   # through several keyframes
    inbetween convert-official FOLDER -o backward.safetensors
    inbetween train | demo | benchmark | evaluate | app  (see ``inbetween COMMAND --help``)

Bad input ends with a one-line ``error: ...`` and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from .utils import InbetweeningError

# Commands defined in other modules: each has ``add_command(subparsers)``, which registers its
# parser and sets ``func`` (a function of the parsed arguments) as a default.
COMMAND_MODULES = (
    "inbetweening.toy.demo",
    "inbetweening.app",
    "inbetweening.training",
    "inbetweening.evaluation",
)


def add_model_args(p: argparse.ArgumentParser, backward: bool = True) -> None:
    """--model, --backward, --device, --dtype: how every command finds and places its model."""
    p.add_argument("--model", default=None,
                   help="diffusers SVD folder or hub id (default: the bundled toy model)")
    if backward:
        p.add_argument("--backward", default=None,
                       help="backward-weights file (default: the model folder's "
                            "backward.safetensors, if any)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                  "available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 on a GPU, fp32 on the CPU")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The generation options shared by interpolate, demo, evaluate."""
    from .methods import METHODS

    p.add_argument("--method", default="gi", choices=METHODS,
                   help="gi (the paper), gi-noft (no fine-tuning), trf (time-reversal fusion), "
                        "forward (plain SVD from the first keyframe)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per segment, keyframes included (default: the model's)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's recommendation, else 50)")
    p.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    p.add_argument("--size", default=None, help="WxH, multiples of 64 (default: the model's)")
    p.add_argument("--fps", type=int, default=7, help="frame rate of the output and of the "
                                                      "UNet's fps conditioning")
    p.add_argument("--guidance", default=None,
                   help="MIN,MAX per-frame guidance (default 1,3; 1,1 turns CFG off)")
    p.add_argument("--reinject", type=int, default=None,
                   help="noise re-injections per step (default 5 for two-direction methods)")
    p.add_argument("--reinject-fraction", type=float, default=0.5,
                   help="fraction of the steps that get re-injection (default 0.5)")
    p.add_argument("--fuse", default="average", choices=["average", "linear"])
    p.add_argument("--dual-pass", default="fused", choices=["fused", "reference"],
                   help="fused: one UNet call for both directions; reference: the paper's two "
                        "calls with explicit maps")
    p.add_argument("--max-unet-batch", type=int, default=None,
                   help="split the fused UNet batch into calls of at most this many rows, to "
                        "save memory (default: one call)")
    p.add_argument("--decode-chunk", type=int, default=None, help="frames decoded at once")


def sampling_kwargs(args, pipe) -> dict:
    """Pipeline keyword arguments from :func:`add_sampling_args` options."""
    from .loading import parse_size

    size = parse_size(args.size)
    kw = dict(method=args.method, num_frames=args.frames, fps=args.fps, fuse=args.fuse,
              dual_pass=args.dual_pass, reinject_count=args.reinject,
              reinject_fraction=args.reinject_fraction, max_unet_batch=args.max_unet_batch,
              decode_chunk_size=args.decode_chunk)
    if size is not None:
        kw["width"], kw["height"] = size
    if args.steps is not None:
        kw["num_inference_steps"] = args.steps
    if args.guidance:
        try:
            lo, hi = (float(v) for v in args.guidance.split(","))
        except ValueError:
            raise InbetweeningError(f"--guidance takes MIN,MAX (e.g. 1,3), not {args.guidance!r}") \
                from None
        kw["min_guidance_scale"], kw["max_guidance_scale"] = lo, hi
    # The model's own recommendations (the toy model ships some) under what was asked for.
    return {**pipe.defaults, **{k: v for k, v in kw.items() if v is not None}}


def seed_generator(seed: int | None):
    import torch

    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


# -- interpolate ----------------------------------------------------------------------------------

def _interpolate(args) -> None:
    from . import media
    from .keyframes import inbetween_sequence, layout
    from .loading import load_pipeline
    from .pipeline import check_aspects

    media.check_output(args.output, args.overwrite, args.keyframes)
    images = [media.read_image(p) for p in args.keyframes]
    layout(images, args.loop)  # too few keyframes: refused before the model is loaded
    check_aspects(images)
    pipe = load_pipeline(args.model, args.backward, args.device, args.dtype)
    kw = sampling_kwargs(args, pipe)
    generator = seed_generator(args.seed)
    t0 = time.time()

    def on_segment(i, n):
        if n > 1:
            print(f"segment {i + 1}/{n}")

    video = inbetween_sequence(pipe, images, loop=args.loop, generator=generator,
                               on_segment=on_segment, **kw)
    if args.side_by_side:
        video = media.side_by_side(video, images)
    media.write_video(video, args.output, fps=args.fps, overwrite=args.overwrite,
                      inputs=args.keyframes)
    h, w = video.shape[1:3]
    print(f"wrote {args.output} ({len(video)} frames, {w}x{h}, {time.time() - t0:.1f} s)")


def _add_interpolate(sub) -> None:
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
    p.set_defaults(func=_interpolate)


# -- convert-official -----------------------------------------------------------------------------

def _convert(args) -> None:
    from .backward import convert_official
    from .loading import DTYPES

    out = convert_official(args.finetuned, args.output, img2vid=args.img2vid, base=args.base,
                           base_name=args.base_name, dtype=DTYPES[args.dtype],
                           overwrite=args.overwrite)
    print(f"wrote {out}")


def _add_convert(sub) -> None:
    p = sub.add_parser("convert-official",
                       help="import the paper authors' released backward UNet",
                       description="Import the authors' released backward UNet folder "
                                   "(svd_reverse_motion_with_attnflip) as a backward-weights "
                                   "file. With --img2vid and --base, move it onto another base "
                                   "(e.g. SVD-XT) as base + (finetuned - img2vid).")
    p.add_argument("finetuned", help="the released UNet folder (or its parent)")
    p.add_argument("-o", "--output", required=True, help="backward-weights file to write")
    p.add_argument("--img2vid", default=None, help="UNet folder of the model it was tuned from")
    p.add_argument("--base", default=None, help="UNet folder of the base to move it onto")
    p.add_argument("--base-name", default=None, help="name recorded in the file's metadata")
    p.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_convert)


# -- main -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inbetween", description="Generative inbetweening: the video between keyframes "
                                      "with Stable Video Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_interpolate(sub)
    _add_convert(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return parser


def quiet_libraries() -> None:
    """Keep the libraries' notices (torchvision fallback, dtype casts) out of the user's way."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*CLIPImageProcessor.*torchvision.*")


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InbetweeningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
