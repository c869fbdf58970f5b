"""Reading keyframes and videos, writing videos (mp4, gif, webp, a folder of PNGs, a zip of PNGs)
atomically."""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import PIL.PngImagePlugin

from .utils import InbetweeningError, atomic_path, check_regular_file, check_target

WRITABLE_VIDEOS = (".mp4", ".gif", ".webp")  # (and .zip of PNG frames, or a folder of them)
READABLE_VIDEOS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the date of every frame in a zip (the earliest zip allows)


# The most text one PNG text chunk may hold, compressed or not: Pillow's limit on a compressed
# one's (and on a colour profile's) decompressed size, held to plain tEXt chunks too.
MAX_PNG_TEXT = PIL.PngImagePlugin.MAX_TEXT_CHUNK


def read_image(path: str | os.PathLike, max_pixels: int | None = 64_000_000) -> PIL.Image.Image:
    """An image file as 8-bit RGB, or a one-line InbetweeningError saying why not: not a regular
    file, not an image, larger than ``max_pixels``, a PNG with a text chunk over
    :data:`MAX_PNG_TEXT` or a colour profile over Pillow's limit, damaged. 16-bit and
    floating-point images are scaled to 8 bits, not clipped."""
    path = check_regular_file(path, "an image")
    limit = max_pixels or PIL.Image.MAX_IMAGE_PIXELS
    too_large = f"{path}: the image is too large (at most {limit:,} pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as im:
                if im.width * im.height > limit:
                    raise InbetweeningError(f"{path}: {im.width}x{im.height} is too large "
                                            f"(at most {limit:,} pixels)")
                im.load()
                _check_png_text(im, path)
                return _to_rgb8(im, path)
    except InbetweeningError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise InbetweeningError(too_large) from None
    except PIL.UnidentifiedImageError:
        raise InbetweeningError(f"{path}: not an image file") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "corrupt"
        raise _cannot_read(path, e) from None


class ImageSize(NamedTuple):
    width: int
    height: int


def image_size(path: str | os.PathLike, max_pixels: int | None = 64_000_000) -> ImageSize:
    """An image file's size from its header alone (nothing decoded: quick, for checking many
    files before any work), or a one-line InbetweeningError: no such file, not an image, too
    large. A file whose pixels are damaged passes; :func:`read_image` finds that out."""
    path = check_regular_file(path, "an image")
    limit = max_pixels or PIL.Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as im:
                size = ImageSize(im.width, im.height)
    except PIL.Image.DecompressionBombError:
        size = None
    except PIL.UnidentifiedImageError:
        raise InbetweeningError(f"{path}: not an image file") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise _cannot_read(path, e) from None
    if size is None or size.width * size.height > limit:
        raise InbetweeningError(f"{path}: the image is too large (at most {limit:,} pixels)")
    return size


def _cannot_read(path: Path, e: Exception) -> InbetweeningError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
    return InbetweeningError(f"{path}: cannot read image ({first})")


def _check_png_text(im: PIL.Image.Image, path: Path) -> None:
    """Refuse a PNG whose text chunks (all read by ``load``) hold more than MAX_PNG_TEXT each."""
    texts = im.text if isinstance(im, PIL.PngImagePlugin.PngImageFile) else {}
    longest = max((len(v) for v in texts.values()), default=0)
    if longest > MAX_PNG_TEXT:
        raise InbetweeningError(f"{path}: cannot read image (a PNG text chunk of {longest:,} "
                                f"characters; at most {MAX_PNG_TEXT:,})")


def _to_rgb8(im: PIL.Image.Image, path: Path) -> PIL.Image.Image:
    """RGB with 8 bits a channel. Integer images deeper than 8 bits are scaled by their bit depth
    (16-bit: /257); floating-point ones are taken as [0, 1] (or [0, 255] when above 1)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise InbetweeningError(f"{path}: the image has values that are not numbers")
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        if im.mode == "F":
            scale = 255.0 if hi <= 1.0 else 1.0
            if lo < 0 or hi * scale > 255.0 + 1e-6:
                raise InbetweeningError(f"{path}: a floating-point image must hold values in "
                                        f"[0, 1] or [0, 255], not [{lo:g}, {hi:g}]")
        else:
            scale = 1 / 257 if im.mode.startswith("I;16") or hi > 255 else 1.0
            if lo < 0 or hi > 65535:
                raise InbetweeningError(f"{path}: a {im.mode} image must hold 8- or 16-bit "
                                        f"values, not [{lo:g}, {hi:g}]")
        gray = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(np.stack([gray] * 3, axis=-1))
    return im.convert("RGB")


def output_kind(path: str | os.PathLike) -> str:
    """'mp4', 'gif', 'webp', 'zip' (PNG frames in a zip file) or 'png' (a folder of PNG frames:
    a path without a suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix in WRITABLE_VIDEOS or suffix == ".zip":
        return suffix[1:]
    if suffix == "":
        return "png"
    raise InbetweeningError(f"cannot write {path}: the output must end in .mp4, .gif, .webp or "
                            ".zip (PNG frames), or be a folder name (for PNG frames)")


def frame_name(i: int) -> str:
    """The file name of frame ``i`` in a PNG folder or zip."""
    return f"frame_{i:04d}.png"


def _even(a: np.ndarray) -> np.ndarray:
    """Pad a frame by repeating its last row / column to even sides (H.264 in yuv420p needs
    them)."""
    h, w = a.shape[:2]
    return np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else a


def check_output(path: str | os.PathLike, overwrite: bool, inputs=()) -> str:
    """Check an output path before any work is done (see :func:`utils.check_target`); returns
    its kind. ``inputs``: files the output must never replace or hold."""
    if str(path) == "":
        raise InbetweeningError("the output path is empty")
    kind = output_kind(path)
    check_target(path, overwrite, folder=kind == "png", inputs=inputs)
    return kind


def as_uint8(frames) -> list[np.ndarray]:
    """Frames (PIL images, or arrays: uint8, or float in [0, 1]) as the 8-bit arrays every
    writer saves: float values rounded to the nearest of 256 levels."""
    out = []
    for f in frames:
        if isinstance(f, PIL.Image.Image):
            out.append(np.asarray(f.convert("RGB")))
        else:
            a = np.asarray(f)
            if a.dtype != np.uint8:
                a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
            out.append(a)
    return out


def write_video(frames, path: str | os.PathLike, fps: float = 7, *,
                overwrite: bool = False, inputs=()) -> Path:
    """Write frames (PIL images or HxWx3 arrays, uint8 or float in [0, 1]) to ``path``.

    ``.mp4`` (H.264, yuv420p; odd sides are padded by one pixel), ``.gif`` (identical
    consecutive frames are merged into one longer frame, which plays the same), ``.webp``
    (animated, lossless), ``.zip`` (PNG frames) or a folder of PNGs (``frame_0000.png`` ...).
    The file appears only when complete; a failure leaves nothing behind.
    """
    kind = check_output(path, overwrite, inputs)
    if not fps > 0:
        raise InbetweeningError(f"the frame rate must be positive, not {fps}")
    arrays = as_uint8(frames)
    if not arrays:
        raise InbetweeningError("no frames to write")
    if any(a.ndim != 3 or a.shape[-1] != 3 or a.shape != arrays[0].shape for a in arrays):
        raise InbetweeningError("frames must all be H x W x 3 of the same size")
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        if kind == "mp4":
            import imageio.v2 as imageio

            arrays = [_even(a) for a in arrays]
            h, w = arrays[0].shape[:2]
            block = 16 if h % 16 == 0 and w % 16 == 0 else 1
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", quality=9, macro_block_size=block,
                                        ffmpeg_log_level="error")
            # Not imageio's `with`: on an error it leaves ffmpeg running, which then writes the
            # file after it was cleaned up. Close it here, on success and on failure.
            try:
                for a in arrays:
                    writer.append_data(a)
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.close()
                raise
            writer.close()
        elif kind in ("gif", "webp"):
            ims = [PIL.Image.fromarray(a) for a in arrays]
            extra = {"lossless": True} if kind == "webp" else {"disposal": 1}
            ims[0].save(tmp, format=kind.upper(), save_all=True, append_images=ims[1:],
                        duration=round(1000 / fps), loop=0, **extra)
        elif kind == "zip":
            import io

            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                for i, a in enumerate(arrays):
                    buf = io.BytesIO()
                    PIL.Image.fromarray(a).save(buf, format="PNG")
                    # (a fixed date: the same frames make the same file, byte for byte)
                    info = zipfile.ZipInfo(frame_name(i), date_time=ZIP_DATE)
                    info.external_attr = 0o600 << 16  # (what writestr gives a name)
                    z.writestr(info, buf.getvalue())
        else:
            tmp.mkdir()
            for i, a in enumerate(arrays):
                PIL.Image.fromarray(a).save(tmp / frame_name(i))
    return path


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames of a video file (or a folder of images, sorted by name) as (F, H, W, 3) uint8,
    and its frame rate (0 when unknown)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InbetweeningError(f"{path}: no image files in this folder")
        return np.stack([np.asarray(read_image(f)) for f in files]), 0.0
    check_regular_file(path, "a video")
    # Each kind read by the plugin imageio would pick, and only by it: a file it cannot read is
    # not offered to its other plugins (which would also make ~/.imageio).
    plugin = {".gif": "pillow", ".webp": "pillow"}.get(path.suffix.lower(), "FFMPEG")
    if path.suffix.lower() not in (*READABLE_VIDEOS, *WRITABLE_VIDEOS):
        raise InbetweeningError(f"{path}: not a video file (one of "
                                f"{', '.join(dict.fromkeys(READABLE_VIDEOS + WRITABLE_VIDEOS))})")
    import imageio.v3 as iio

    try:
        frames = [np.asarray(PIL.Image.fromarray(f).convert("RGB"))
                  for f in iio.imiter(path, plugin=plugin)]
        try:
            fps = float(iio.immeta(path, plugin=plugin).get("fps", 0) or 0)
        except Exception:  # noqa: BLE001 - metadata is optional
            fps = 0.0
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault here
        raise InbetweeningError(f"{path}: cannot read video ({type(e).__name__})") from None
    if not frames:
        raise InbetweeningError(f"{path}: the video has no frames")
    return np.stack(frames), fps


def side_by_side(video: np.ndarray, keyframes: list, gap: int = 4) -> np.ndarray:
    """Each frame of ``video`` ((F, H, W, 3) in [0, 1]) between the first and the last keyframe,
    scaled to the video's height, with a dark gap between panels."""
    f, h, w, _ = video.shape

    def fit(im) -> np.ndarray:
        im = im if isinstance(im, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(im))
        scaled = im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h),
                                          PIL.Image.LANCZOS)
        return np.asarray(scaled).astype(np.float32) / 255.0

    first, last = fit(keyframes[0]), fit(keyframes[-1])
    pad = np.full((h, gap, 3), 0.1, dtype=np.float32)
    return np.stack([np.concatenate([first, pad, frame.astype(np.float32), pad, last], axis=1)
                     for frame in video])
