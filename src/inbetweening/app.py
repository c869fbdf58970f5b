"""The web app: drop two or more keyframes on a page, get the video between them.

    inbetween app                         # http://127.0.0.1:7860, the bundled toy model
    inbetween app --port 8000 --model path/to/svd-xt --backward backward.safetensors

Keyframes are uploaded in order (drag them to reorder); a segment is made per neighbouring pair
(see :mod:`inbetweening.keyframes`), ``Loop`` closes the video back on the first keyframe. The
result plays on the page and downloads as mp4, gif and a zip of PNG frames.

Uploads that are not images, or larger than ``--max-upload-mb`` (20 MB) or ``--max-pixels``, are
refused with a message on the page; the app goes on serving. So are seeds beyond 2**64 - 1 and
sizes x frames beyond what the machine can sample (:mod:`inbetweening.capacity`). It listens on
127.0.0.1 unless ``--host`` says otherwise, and never reaches the internet: Gradio's analytics
are off, there are no share links, and the page's fonts and scripts come from the app itself.

The page is built with Gradio (``pip install 'inbetweening[app]'``). :class:`InbetweenApp` holds
the handlers as plain methods, so they can be used (and tested) without a browser.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import random
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .options import SamplingOptions, check_fields, parse_size
from .utils import InbetweeningError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 25_000_000
MAX_UPLOAD_PIXELS = 64_000_000  # (media.read_image's own limit)
MAX_UPLOAD_MB = 1024
# Gradio itself stops an upload this many times over the limit, before it reaches a handler (so a
# huge file is not written to disk in full); smaller oversized files get the handler's message.
SERVER_UPLOAD_FACTOR = 5
KEEP_RESULTS = 8  # result folders kept on disk (older ones are deleted)
OUTPUT_NAMES = ("inbetween.mp4", "inbetween.gif", "inbetween_frames.zip")


def offline_gradio() -> None:
    """Make sure Gradio sends nothing to the internet (set before it is imported)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


@dataclass(frozen=True)
class Limits:
    """What an upload may be (each limit checked when made: see options.check_fields)."""

    max_bytes: int = field(default=int(DEFAULT_MAX_UPLOAD_MB * 2**20),
                           metadata={"range": (1, MAX_UPLOAD_MB * 2**20)})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS,
                            metadata={"range": (1, MAX_UPLOAD_PIXELS)})

    def __post_init__(self):
        check_fields(self)

    def describe(self) -> str:
        return (f"images up to {self.max_bytes / 2**20:g} MB and "
                f"{self.max_pixels / 1e6:g} megapixels")


def check_upload(path: str | os.PathLike, limits: Limits = Limits()):
    """An uploaded keyframe as an RGB PIL image, or an InbetweeningError naming the file (by its
    own name, not the server's temporary path) and what is wrong with it."""
    from . import media

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InbetweeningError(f"{name}: the upload is missing (upload it again)")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InbetweeningError(f"{name}: {size / 2**20:.1f} MB is larger than the "
                                f"{limits.max_bytes / 2**20:g} MB upload limit")
    try:
        return media.read_image(path, max_pixels=limits.max_pixels)
    except InbetweeningError as e:
        raise InbetweeningError(str(e).replace(str(path), name)) from None
    except Exception as e:  # noqa: BLE001 - whatever a reader raises, the page says it
        first = (str(e).strip().splitlines() or [""])[0].replace(str(path), name)[:120]
        raise InbetweeningError(f"{name}: cannot read image ({type(e).__name__}"
                                f"{': ' * bool(first)}{first})") from None


def describe_model(model) -> str:
    from .locate import resolve_model

    source = resolve_model(model)
    if source is None:
        return ("a tiny **untrained** model (this install has no trained toy model yet): its "
                "videos are noise")
    from .locate import bundled_model

    if model in (None, "") and source == bundled_model():
        return "the bundled toy model (64x64 toy-world videos)"
    return f"`{source}`"


class InbetweenApp:
    """The app's state (a loaded pipeline, a work folder, upload limits) and its handlers."""

    def __init__(self, pipe, workdir: str | os.PathLike, limits: Limits = Limits(),
                 model_description: str = ""):
        self.pipe = pipe
        self.workdir = Path(workdir)
        self.limits = limits
        self.model_description = model_description
        self._lock = threading.Lock()  # one generation at a time: the pipeline is not reentrant
        self._count = 0

    # -- defaults shown on the page ----------------------------------------------------------
    def defaults(self, method: str | None = None) -> dict:
        """Method, frames, steps, size, fps and SVD's conditioning that the page shows (when it
        starts, or when ``method`` is picked): what a call of the pipeline with nothing else set
        runs with (:meth:`InbetweenPipeline.call_settings`: the method's own settings, the
        model's recommendation)."""
        s, _ = self.pipe.call_settings(method or None)
        return dict(method=s["method"], frames=int(s["num_frames"]),
                    steps=int(s["num_inference_steps"]), size=f"{s['width']}x{s['height']}",
                    fps=int(s["fps"]), motion_bucket=int(s["motion_bucket_id"]),
                    noise_aug=float(s["noise_aug_strength"]))

    def max_frames(self) -> int:
        return 2 * int(self.pipe.unet.config.num_frames)

    # -- uploads -------------------------------------------------------------------------------
    def on_upload(self, files: list | None) -> tuple[list[str], str]:
        """Keep the uploaded files that are usable keyframes, in order, and say why the others
        were refused (an empty notice when none was). Refused files are deleted."""
        kept, problems = [], []
        for f in files or []:
            path = None
            try:
                path = _path_of(f)
                check_upload(path, self.limits)
                kept.append(path)
            except InbetweeningError as e:
                problems.append(str(e))
                _remove_quietly(path)
        if not problems:
            return kept, ""
        refused = "\n".join(f"- {p}" for p in problems)
        return kept, (f"**Refused {len(problems)} upload{'s' * (len(problems) > 1)}** "
                      f"({self.limits.describe()}):\n{refused}")

    def count_message(self, files: list | None) -> str:
        n = len(files or [])
        if n == 0:
            return "Upload two or more keyframes."
        if n == 1:
            return "1 keyframe: add at least one more (or tick Loop)."
        return f"{n} keyframes, in this order. Press Generate."

    def preview(self, files: list | None) -> list[tuple[str, str]]:
        """Gallery items (image, caption) of the keyframes in their current order."""
        items = []
        for f in files or []:
            path = _path_of(f)
            try:
                check_upload(path, self.limits)
            except InbetweeningError:
                continue
            items.append((path, f"{len(items) + 1}: {Path(path).name}"))
        return items

    # -- generation ----------------------------------------------------------------------------
    def sampling_options(self, method: str, frames, steps, size: str, fps,
                         recipe: str | None = None, motion_bucket=None,
                         noise_aug=None) -> SamplingOptions:
        """The page's settings as checked sampling options (as the command line's are).
        ``recipe``: a named recipe (its re-injections; the page's steps field overrides its
        steps, and shows them when the recipe is picked), or None / "" for the model's own."""
        return SamplingOptions(
            recipe=recipe or None, method=method, frames=_as_int(frames, "frames"),
            steps=_as_int(steps, "steps"), size=parse_size(str(size or "").strip() or None),
            fps=_as_int(fps, "fps"),
            motion_bucket_id=None if motion_bucket is None else _as_int(motion_bucket,
                                                                        "motion bucket"),
            noise_aug_strength=None if noise_aug is None else _as_float(noise_aug,
                                                                        "noise augmentation"),
        ).check()

    def generate(self, files: list | None, method: str, frames, steps, seed, size: str, fps,
                 loop: bool = False, side_by_side: bool = False, recipe: str | None = None,
                 motion_bucket=None, noise_aug=None, memory: str | None = None,
                 progress: Callable | None = None) -> tuple[str | None, list[str] | None, str]:
        """Make the video through the uploaded keyframes, as ``inbetween interpolate`` makes it
        (:func:`inbetweening.keyframes.interpolate`). Returns (mp4 to play, files to download,
        message); on bad input (None, None, the reason). ``memory``: a memory setting
        (:mod:`inbetweening.memory`) to switch the pipeline to first (None: keep its own)."""
        from . import media
        from .memory import apply_memory
        from .inputs import check_aspects
        from .keyframes import check_options, layout

        # (not `progress or ...`: a gr.Progress has a length, 0 until it tracks an iterable)
        report = progress if progress is not None else (lambda *a, **k: None)
        t0 = time.time()
        try:
            paths = [_path_of(f) for f in files or []]
            if len(paths) < 2 and not (loop and len(paths) == 1):
                raise InbetweeningError("upload at least two keyframes (or one and tick Loop)")
            images = [check_upload(p, self.limits) for p in paths]
            check_aspects(images)
            options = self.sampling_options(method, frames, steps, size, fps, recipe,
                                            motion_bucket, noise_aug)
            settings = check_options(self.pipe, options, images[0])
            seed = _seed(seed)
            closed = layout(images, loop).closed
            with self._lock:
                if memory is not None:
                    apply_memory(self.pipe, memory)
                video = self._run(images, loop, side_by_side, seed, options,
                                  settings["num_inference_steps"], report)
            report(1.0, desc="writing mp4, gif and PNG frames")
            out = self._result_dir()
            written = [str(media.write_video(video.frames, out / name, fps=video.fps))
                       for name in OUTPUT_NAMES]
        except InbetweeningError as e:
            return None, None, f"**Error:** {e}"
        except Exception as e:  # noqa: BLE001 - a bug must not take the page down; say it
            traceback.print_exc()
            return None, None, f"**Error:** something went wrong ({type(e).__name__}: {e})"
        n, h, w = video.frames.shape[:3]
        loop_note = ", a seamless loop" if closed else ""
        return written[0], written, (f"**Done:** {n} frames, {w}x{h}, {video.fps} fps, "
                                     f"seed {seed}{loop_note} ({time.time() - t0:.1f} s).")

    def _run(self, images, loop, side_by_side, seed, options, steps, report):
        from .keyframes import interpolate

        segment = {"index": 0, "count": 1}

        def on_segment(i: int, n: int) -> None:
            segment.update(index=i, count=n)
            report(i / n, desc=f"segment {i + 1}/{n}")

        def on_step(pipe, i, t, tensors):
            n = segment["count"]
            where = f"segment {segment['index'] + 1}/{n}, " if n > 1 else ""
            report((segment["index"] + (i + 1) / steps) / n, desc=f"{where}step {i + 1}/{steps}")
            return {}

        return interpolate(self.pipe, images, options, seed=seed, loop=loop,
                           side_by_side=side_by_side, on_segment=on_segment,
                           callback_on_step_end=on_step)

    def _result_dir(self) -> Path:
        """A fresh folder for one result; only the last few are kept."""
        root = self.workdir / "results"
        root.mkdir(parents=True, exist_ok=True)
        self._count += 1
        out = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self._count:04d}"
        out.mkdir()
        for old in sorted(p for p in root.iterdir() if p.is_dir())[:-KEEP_RESULTS]:
            shutil.rmtree(old, ignore_errors=True)
        return out

    # -- the page ------------------------------------------------------------------------------
    def build(self):
        """The Gradio page (a ``gr.Blocks``): :func:`inbetweening.page.build_page`."""
        offline_gradio()
        from .page import build_page

        return build_page(self)


def _path_of(f) -> str:
    """A handler's file value (a path, or an object with ``.name``/``.path``) as a path."""
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    for attr in ("path", "name"):
        if isinstance(getattr(f, attr, None), str):
            return getattr(f, attr)
    raise InbetweeningError(f"not an uploaded file: {f!r}")


def _remove_quietly(path: str | None) -> None:
    with contextlib.suppress(OSError, TypeError):
        os.remove(path)


def _as_int(value, what: str) -> int:
    if isinstance(value, (int, str)):
        with contextlib.suppress(ValueError):
            return int(value)  # exactly, however large
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InbetweeningError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InbetweeningError(f"{what} must be a whole number, not {value}")
    return int(number)


def _as_float(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InbetweeningError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise InbetweeningError(f"{what} must be a finite number, not {value}")
    return number


def _seed(value) -> int:
    """The page's seed: a negative one means a random one; else 0 to 2**64 - 1 (torch's)."""
    from .options import check_seed

    seed = _as_int(value, "seed")
    if seed < 0:
        return random.SystemRandom().randrange(2**31 - 1)
    return check_seed(seed)


def _launch(page, host: str, port: int | None, limits: Limits, workdir: Path) -> None:
    page.queue(default_concurrency_limit=1, max_size=32)
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                    show_error=True, max_file_size=SERVER_UPLOAD_FACTOR * limits.max_bytes,
                    allowed_paths=[str(workdir)], ssr_mode=False, mcp_server=False, pwa=False,
                    enable_monitoring=False)
    except OSError as e:
        raise InbetweeningError(f"cannot listen on {host}:{port}: {e}") from None


def serve(*, host: str = DEFAULT_HOST, port: int | None = None, limits: Limits = Limits(),
          model=None, backward=None, device=None, dtype=None, compile: bool = False,
          memory: str | None = None) -> None:
    """Load the model and serve the page until stopped (Ctrl-C or SIGTERM: the work folder is
    removed either way)."""
    import signal

    if importlib.util.find_spec("gradio") is None:
        raise InbetweeningError("the app needs Gradio: pip install 'inbetweening[app]'")
    try:
        workdir = Path(tempfile.mkdtemp(prefix="inbetween-app-"))
    except OSError as e:
        raise InbetweeningError(f"cannot make the app's work folder in "
                                f"{tempfile.gettempdir()} ({e.strerror})") from None

    def on_term(signum, frame):  # as Ctrl-C: unwind, so the work folder is cleaned up
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # Gradio's uploads and cache go into the work folder too (unless GRADIO_TEMP_DIR says
    # elsewhere), so that nothing of this run is left in the temporary folder after it.
    gradio_dir = os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "gradio"))
    try:
        offline_gradio()
        from .loading import load_pipeline

        pipe = load_pipeline(model, backward, device, dtype, compile=compile, memory=memory)
        page = InbetweenApp(pipe, workdir, limits, describe_model(model)).build()
        _launch(page, host, port, limits, workdir)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if gradio_dir == str(workdir / "gradio"):
            del os.environ["GRADIO_TEMP_DIR"]
        shutil.rmtree(workdir, ignore_errors=True)
