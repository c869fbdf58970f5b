"""``inbetween convert-official``: import the paper authors' released backward UNet."""

from __future__ import annotations


def run(args) -> None:
    from ..backward import convert_official
    from ..loading import DTYPES

    out = convert_official(args.finetuned, args.output, img2vid=args.img2vid, base=args.base,
                           base_name=args.base_name, dtype=DTYPES[args.dtype],
                           overwrite=args.overwrite)
    print(f"wrote {out}")


def add_command(sub) -> None:
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
    p.set_defaults(func=run)
