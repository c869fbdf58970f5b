"""``inbetween render``: many shots from a manifest, shared among processes, resumable."""

from __future__ import annotations

from ..utils import InbetweeningError
from .common import add_model_args, add_sampling_args, sampling_options


def failures(summary: dict) -> str | None:
    """The failed shots of a summary, one line each after a first line that counts them."""
    failed = [e for e in summary["outputs"] if e["status"] == "failed"]
    if not failed:
        return None
    return "\n".join([f"{len(failed)} of {summary['shots']} shots failed (the others are done; "
                      "a rerun tries these again):"] +
                     [f"line {e['line']} {e['output']}: {e['error']}" for e in failed])


def run(args) -> None:
    from ..options import check_seed
    from ..render import render

    options = sampling_options(args)
    summary = render(args.manifest, args.output, model=args.model, backward=args.backward,
                     device=args.device, dtype=args.dtype, options=options,
                     seed=check_seed(args.seed), overwrite=args.overwrite, compile=args.compile,
                     memory=args.memory)
    said = failures(summary) if summary is not None else None
    if said:
        raise InbetweeningError(said)


def add_command(sub) -> None:
    p = sub.add_parser(
        "render", help="many shots from a manifest (CSV or JSON lines), resumable",
        description="Render every shot of MANIFEST into the folder OUT, each as `inbetween "
                    "interpolate` would, with the model loaded once. A row: keyframes (paths "
                    "relative to the manifest, ';'-separated), output (a name under OUT: "
                    ".mp4, .gif, .webp, .zip or a folder of PNGs), and optionally seed, loop, "
                    "side_by_side and any sampling option below (method, recipe, frames, steps, "
                    "size, fps ...). Every row is checked before any work. A rerun renders only "
                    "what is missing. Several processes share the shots under `accelerate "
                    "launch --multi_gpu --num_processes N -m inbetweening.cli render ...` or "
                    "`torchrun --nproc-per-node N -m inbetweening.cli render ...`.",
        epilog="The options below are every shot's settings; a row's cells override them. "
               "OUT/render.json sums up each shot: seed, settings, seconds, predictions, output, "
               "status.")
    p.add_argument("manifest", metavar="MANIFEST", help="shots.csv or shots.jsonl")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder of the videos")
    p.add_argument("--overwrite", action="store_true",
                   help="render again the outputs in OUT made with other settings")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="the seed of rows without one (default 0)")
    p.set_defaults(func=run)
