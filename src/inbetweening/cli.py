"""The ``inbetween`` command line: the entry point. Each command lives in its own module (see
:data:`COMMAND_MODULES`) with ``add_command(subparsers)``, which registers its parser and sets
``func`` (a function of the parsed arguments).

    inbetween interpolate START END -o video.mp4        # the video between two keyframes
    inbetween interpolate K1 K2 K3 --loop -o loop.gif   # through several keyframes
    inbetween render shots.csv -o shots/                # many shots, resumable, multi-process
    inbetween convert-official FOLDER -o backward.safetensors
    inbetween train | demo | benchmark | evaluate | app  (see ``inbetween COMMAND --help``)

Bad input ends with a one-line ``error: ...`` (one line per bad row of a manifest) and exit
status 2; nothing is written. Importing
this module imports no deep-learning library: ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from .commands import app, convert, demo, evaluate, interpolate, render, train
from .utils import InbetweeningError

COMMAND_MODULES = (interpolate, render, convert, train, evaluate, demo, app)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: ``error: ...`` and exit status 2, no usage."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.removeprefix('inbetween ')}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="inbetween", description="Generative inbetweening: the video between keyframes "
                                      "with Stable Video Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for module in COMMAND_MODULES:
        module.add_command(sub)
    return parser


def quiet_libraries() -> None:
    """Keep the libraries' notices (torchvision fallback, dtype casts) out of the user's way."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=".*CLIPImageProcessor.*torchvision.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already said in one line)
        return int(e.code or 0)
    quiet_libraries()
    try:
        args.func(args)
    except InbetweeningError as e:
        for line in str(e).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
