"""The web app: drop two or more keyframes on a page, get the video between them.

    inbetween app                         # http://127.0.0.1:7860, the bundled toy model
    inbetween app --port 8000 --model path/to/svd-xt --backward backward.safetensors

Keyframes are uploaded in order (drag them to reorder); a segment is made per neighbouring pair
(see :mod:`inbetweening.keyframes`), ``Loop`` closes the video back on the first keyframe. The
result plays on the page and downloads as mp4, gif and a zip of PNG frames.

Uploads that are not images, or larger than ``--max-upload-mb`` (20 MB) or ``--max-pixels``, are
refused with a message on the page; the app goes on serving. So are seeds beyond 2**64 - 1 and
sizes x frames beyond what the machine can sample (:func:`pixel_frame_limit`). It listens on
127.0.0.1 unless ``--host`` says otherwise, and never reaches the internet: Gradio's analytics
are off, there are no share links, and the page's fonts and scripts come from the app itself.

The page is built with Gradio (``pip install 'inbetweening[app]'``). :class:`InbetweenApp` holds
the handlers as plain methods, so they can be used (and tested) without a browser.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .memory import MEMORY_PRESETS, apply_memory
from .options import RECIPES, SamplingOptions, parse_size
from .utils import InbetweeningError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 25_000_000
# Gradio itself stops an upload this many times over the limit, before it reaches a handler (so a
# huge file is not written to disk in full); smaller oversized files get the handler's message.
SERVER_UPLOAD_FACTOR = 5
CPU_WORK_FACTOR = 4  # see pixel_frame_limit
VAE_PEAK_TENSORS = 8  # see pixel_frame_limit
KEEP_RESULTS = 8  # result folders kept on disk (older ones are deleted)
METHOD_LABELS = {"gi": "gi: generative inbetweening (the paper)",
                 "gi-noft": "gi-noft: rotated attention, no fine-tuning",
                 "trf": "trf: time-reversal fusion (as its release)",
                 "forward": "forward: plain image-to-video from the first keyframe",
                 "trf-avg": "trf-avg: time-reversal fusion with GI's sampler",
                 "vibid": "vibid: ViBiDSampler (sequential, no fine-tuning)",
                 "gi-sequential": "gi-sequential: ViBiD's schedule, GI's backward model",
                 "mpd": "mpd: motion prior distillation (on ViBiD)"}
MEMORY_CHOICES = [(f"{name}: {p.summary}", name) for name, p in MEMORY_PRESETS.items()]
OUTPUT_NAMES = ("inbetween.mp4", "inbetween.gif", "inbetween_frames.zip")


def offline_gradio() -> None:
    """Make sure Gradio sends nothing to the internet (set before it is imported)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""

    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_pixels: int = DEFAULT_MAX_PIXELS

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


def free_device_memory(device) -> int:
    """Bytes a CUDA device can still give: its free memory and what torch holds cached unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def pixel_frame_limit(pipe) -> tuple[int, str]:
    """The most width x height x frames one segment may ask for, and what sets it.

    The rule, an estimate of a pipeline call's memory: its peak is the VAE decoding all frames
    at once at full resolution, about VAE_PEAK_TENSORS tensors of (frames, channels, H, W) with
    the channels of the decoder's last block, in the VAE's dtype. On a GPU the limit is its free
    memory over those bytes per pixel x frame; on the CPU (whose memory is shared and where time
    also grows with the work) a fixed CPU_WORK_FACTOR times the model's usual work (its default
    width x height x frames). The model's usual work is always allowed."""
    d = pipe.defaults
    width, height = pipe.default_size()
    width, height = d.get("width", width), d.get("height", height)
    frames = int(d.get("num_frames", pipe.unet.config.num_frames))
    usual = width * height * frames
    if pipe.device.type != "cuda":
        return CPU_WORK_FACTOR * usual, (f"the CPU ({CPU_WORK_FACTOR}x the model's usual "
                                         f"{width}x{height} x {frames} frames)")
    free = free_device_memory(pipe.device)
    per = pipe.vae.dtype.itemsize * VAE_PEAK_TENSORS * int(pipe.vae.config.block_out_channels[0])
    return max(usual, free // per), f"the free memory of {pipe.device} ({free / 2**30:.1f} GB)"


def describe_model(model) -> str:
    from .loading import resolve_model

    source = resolve_model(model)
    if source is None:
        return ("a tiny **untrained** model (this install has no trained toy model yet): its "
                "videos are noise")
    from .loading import bundled_model

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
    def defaults(self) -> dict:
        """Method, frames, steps, size and fps the page starts with: the model's recommendation
        where it has one (``pipe.defaults``), else the pipeline's own defaults."""
        import inspect

        call = inspect.signature(type(self.pipe).__call__).parameters
        d = self.pipe.defaults
        width, height = self.pipe.default_size()
        return dict(
            method=d.get("method", call["method"].default),
            frames=int(d.get("num_frames", self.pipe.unet.config.num_frames)),
            steps=int(d.get("num_inference_steps", call["num_inference_steps"].default)),
            size=f"{d.get('width', width)}x{d.get('height', height)}",
            fps=int(d.get("fps", call["fps"].default)),
        )

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
    def sampling_kwargs(self, method: str, frames, steps, size: str, fps,
                        recipe: str | None = None) -> dict:
        """Pipeline arguments from the page's settings (checked as the command line's are).
        ``recipe``: a named recipe (its re-injections; the page's steps field overrides its
        steps, and shows them when the recipe is picked), or None / "" for the model's own."""
        options = SamplingOptions(recipe=recipe or None, method=method,
                                  frames=_as_int(frames, "frames"),
                                  steps=_as_int(steps, "steps"),
                                  size=parse_size((size or "").strip() or None),
                                  fps=_as_int(fps, "fps")).check()
        return options.call_kwargs(self.pipe.defaults)

    def check_work(self, kw: dict) -> None:
        """Refuse, with the reason, a segment larger than :func:`pixel_frame_limit` (after the
        pipeline's own checks of the size and frame count)."""
        width, height = self.pipe.default_size()
        width, height = kw.get("width", width), kw.get("height", height)
        frames = kw.get("num_frames") or self.pipe.unet.config.num_frames
        self.pipe.check_inputs(height, width, frames, kw["method"],
                               kw.get("num_inference_steps") or 1)
        limit, basis = pixel_frame_limit(self.pipe)
        if width * height * frames > limit:
            raise InbetweeningError(
                f"{width}x{height} x {frames} frames is too large for {basis}: at most "
                f"{limit:,} pixels x frames per segment; choose a smaller size or fewer frames")

    def generate(self, files: list | None, method: str, frames, steps, seed, size: str, fps,
                 loop: bool = False, side_by_side: bool = False, recipe: str | None = None,
                 progress: Callable | None = None,
                 memory: str | None = None) -> tuple[str | None, list[str] | None, str]:
        """Make the video through the uploaded keyframes. Returns (mp4 to play, files to
        download, message); on bad input (None, None, the reason). ``memory``: a memory setting
        (:mod:`inbetweening.memory`) to switch the pipeline to first (None: keep its own)."""
        from . import media
        from .keyframes import layout
        from .pipeline import check_aspects

        # (not `progress or ...`: a gr.Progress has a length, 0 until it tracks an iterable)
        report = progress if progress is not None else (lambda *a, **k: None)
        t0 = time.time()
        try:
            paths = [_path_of(f) for f in files or []]
            if len(paths) < 2 and not (loop and len(paths) == 1):
                raise InbetweeningError("upload at least two keyframes (or one and tick Loop)")
            images = [check_upload(p, self.limits) for p in paths]
            check_aspects(images)
            kw = self.sampling_kwargs(method, frames, steps, size, fps, recipe)
            self.check_work(kw)
            seed = _seed(seed)
            closed = layout(images, loop).closed
            with self._lock:
                if memory is not None:
                    apply_memory(self.pipe, memory)
                video = self._run(images, loop, seed, kw, report)
            if side_by_side:
                video = media.side_by_side(video, images)
            report(1.0, desc="writing mp4, gif and PNG frames")
            out = self._result_dir()
            written = [str(media.write_video(video, out / name, fps=kw["fps"]))
                       for name in OUTPUT_NAMES]
        except InbetweeningError as e:
            return None, None, f"**Error:** {e}"
        except Exception as e:  # noqa: BLE001 - a bug must not take the page down; say it
            traceback.print_exc()
            return None, None, f"**Error:** something went wrong ({type(e).__name__}: {e})"
        h, w = video.shape[1:3]
        loop_note = ", a seamless loop" if closed else ""
        return written[0], written, (f"**Done:** {len(video)} frames, {w}x{h}, {kw['fps']} fps, "
                                     f"seed {seed}{loop_note} ({time.time() - t0:.1f} s).")

    def _run(self, images, loop, seed, kw, report):
        import torch

        from .keyframes import inbetween_sequence

        steps = kw.get("num_inference_steps")
        segment = {"index": 0, "count": 1}

        def on_segment(i: int, n: int) -> None:
            segment.update(index=i, count=n)
            report(i / n, desc=f"segment {i + 1}/{n}")

        def on_step(pipe, i, t, tensors):
            n = segment["count"]
            where = f"segment {segment['index'] + 1}/{n}, " if n > 1 else ""
            report((segment["index"] + (i + 1) / steps) / n, desc=f"{where}step {i + 1}/{steps}")
            return {}

        generator = torch.Generator().manual_seed(seed)
        return inbetween_sequence(self.pipe, images, loop=loop, generator=generator,
                                  on_segment=on_segment, callback_on_step_end=on_step, **kw)

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
        """The Gradio page (a ``gr.Blocks``)."""
        offline_gradio()
        import gradio as gr

        from .methods import METHODS

        d = self.defaults()
        with gr.Blocks(title="Inbetweening", delete_cache=(600, 3600),
                       analytics_enabled=False) as page:
            gr.Markdown("# Inbetweening\nThe video between your keyframes, by dual-directional "
                        f"sampling with Stable Video Diffusion. Model: {self.model_description}.")
            with gr.Row():
                with gr.Column(scale=1):
                    keyframes = gr.File(
                        label="Keyframes: two or more images, in order (drag to reorder)",
                        file_count="multiple", type="filepath", allow_reordering=True,
                        elem_id="keyframes")
                    order = gr.Gallery(label="Order", columns=6, fit_columns=False, height=150,
                                       allow_preview=False, object_fit="contain",
                                       interactive=False, elem_id="order")
                    notice = gr.Markdown("", elem_id="notice")
                    status = gr.Markdown(self.count_message([]), elem_id="status")
                    with gr.Row():
                        method = gr.Dropdown([(METHOD_LABELS.get(m, m), m) for m in METHODS],
                                             value=d["method"], label="Method", elem_id="method")
                        size = gr.Textbox(d["size"], label="Size (WxH, multiples of 64)",
                                          elem_id="size")
                    with gr.Row():
                        frames = gr.Slider(3, self.max_frames(), value=d["frames"], step=1,
                                           label="Frames per segment (keyframes included)",
                                           elem_id="frames")
                        recipe = gr.Dropdown([("model's own", "")] + [(r, r) for r in RECIPES],
                                             value="", label="Recipe", elem_id="recipe")
                        steps = gr.Number(d["steps"], precision=0, minimum=1, maximum=1000,
                                          label="Denoising steps", elem_id="steps")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, minimum=-1, label="Seed (-1: random)",
                                         elem_id="seed")
                        fps = gr.Slider(1, 30, value=d["fps"], step=1, label="Frames per second",
                                        elem_id="fps")
                    memory = gr.Dropdown(MEMORY_CHOICES, value=self.pipe.memory, label="Memory",
                                         elem_id="memory")
                    with gr.Row():
                        loop = gr.Checkbox(False, label="Loop (back to the first keyframe)",
                                           elem_id="loop")
                        side = gr.Checkbox(False, label="Show the keyframes beside the video",
                                           elem_id="side-by-side")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=1):
                    video = gr.Video(label="Result", autoplay=True, loop=True, height=360,
                                     interactive=False, elem_id="result")
                    downloads = gr.File(label="Download (mp4, gif, PNG frames as zip)",
                                        file_count="multiple", interactive=False,
                                        elem_id="downloads")
                    message = gr.Markdown("", elem_id="message")

            keyframes.upload(self.on_upload, keyframes, [keyframes, notice])
            keyframes.change(self.preview, keyframes, order)
            keyframes.change(self.count_message, keyframes, status)

            def generate(files, method, frames, steps, seed, size, fps, loop, side, recipe,
                         memory, progress=gr.Progress()):
                return self.generate(files, method, frames, steps, seed, size, fps, loop, side,
                                     recipe, progress=progress, memory=memory)

            recipe.change(lambda r: RECIPES[r]["steps"] if r else d["steps"], recipe, steps)
            run.click(generate, [keyframes, method, frames, steps, seed, size, fps, loop, side,
                                 recipe, memory], [video, downloads, message], concurrency_limit=1)
        return page


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


def _seed(value) -> int:
    """The page's seed: a negative one means a random one; else 0 to 2**64 - 1 (torch's)."""
    from .options import check_seed

    seed = _as_int(value, "seed")
    if seed < 0:
        return random.SystemRandom().randrange(2**31 - 1)
    return check_seed(seed)


def serve(*, host: str = DEFAULT_HOST, port: int | None = None, limits: Limits = Limits(),
          model=None, backward=None, device=None, dtype=None, compile: bool = False,
          memory: str | None = None) -> None:
    """Load the model and serve the page until stopped (Ctrl-C or SIGTERM: the work folder is
    removed either way)."""
    import signal

    offline_gradio()
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InbetweeningError("the app needs Gradio: pip install 'inbetweening[app]'") from None
    from .loading import load_pipeline

    pipe = load_pipeline(model, backward, device, dtype, compile=compile, memory=memory)
    workdir = Path(tempfile.mkdtemp(prefix="inbetween-app-"))

    def on_term(signum, frame):  # as Ctrl-C: unwind, so the work folder is cleaned up
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        page = InbetweenApp(pipe, workdir, limits, describe_model(model)).build()
        page.queue(default_concurrency_limit=1, max_size=32)
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                    show_error=True, max_file_size=SERVER_UPLOAD_FACTOR * limits.max_bytes,
                    allowed_paths=[str(workdir)], ssr_mode=False, mcp_server=False, pwa=False,
                    enable_monitoring=False)
    except OSError as e:
        raise InbetweeningError(f"cannot listen on {host}:{port}: {e}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
