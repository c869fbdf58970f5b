"""``inbetween app``: the web app on localhost (see :mod:`inbetweening.app`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..app import (
    DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, MAX_UPLOAD_MB, MAX_UPLOAD_PIXELS,
)
from .args import add_dataclass_args, from_args
from .common import add_model_args


@dataclass
class AppSettings:
    """The app's own options (their ranges checked by options.check_fields)."""

    host: str = field(default=DEFAULT_HOST, metadata={"help": (
        "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
        "network)")})
    port: int | None = field(default=None, metadata={
        "help": "port (default: 7860, or the next free one)", "range": (1, 65535)})
    max_upload_mb: float = field(default=DEFAULT_MAX_UPLOAD_MB, metadata={
        "help": "largest keyframe file accepted, in MB", "range": (0.001, MAX_UPLOAD_MB)})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "largest keyframe accepted, in pixels", "range": (1, MAX_UPLOAD_PIXELS)})


def run(args) -> None:
    from ..app import Limits, serve

    settings = from_args(AppSettings, args)
    limits = Limits(max_bytes=int(settings.max_upload_mb * 2**20),
                    max_pixels=settings.max_pixels)
    serve(host=settings.host, port=settings.port, limits=limits, model=args.model,
          backward=args.backward, device=args.device, dtype=args.dtype, compile=args.compile,
          memory=args.memory)


def add_command(sub) -> None:
    p = sub.add_parser("app", help="the web app (Gradio) on localhost",
                       description="Serve a web page to make inbetween videos: upload keyframes, "
                                   "choose the settings, watch and download the result.")
    add_dataclass_args(p, AppSettings)
    add_model_args(p)
    p.set_defaults(func=run)
