"""``inbetween app``: the web app on localhost (see :mod:`inbetweening.app`)."""

from __future__ import annotations

from ..app import DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB
from ..utils import InbetweeningError
from .common import add_model_args


def run(args) -> None:
    from ..app import Limits, serve

    if not args.max_upload_mb > 0 or not args.max_pixels > 0:
        raise InbetweeningError("upload limits must be positive")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise InbetweeningError(f"--port must be between 1 and 65535, not {args.port}")
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    serve(host=args.host, port=args.port, limits=limits, model=args.model,
          backward=args.backward, device=args.device, dtype=args.dtype,
          compile=args.compile, memory=args.memory)


def add_command(sub) -> None:
    p = sub.add_parser("app", help="the web app (Gradio) on localhost",
                       description="Serve a web page to make inbetween videos: upload keyframes, "
                                   "choose the settings, watch and download the result.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "opens it to the network)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: 7860, or the next free one)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest keyframe file accepted, in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest keyframe accepted, in pixels (default 25,000,000)")
    add_model_args(p)
    p.set_defaults(func=run)
