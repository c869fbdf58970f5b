"""Outputs the way video makers use them: mp4 (H.264) that decodes back, gif and webp with the
asked frame rate, PNG folders and zips with ordered names, written atomically, never over an
existing file unless asked; side-by-side sheets; reading keyframes and videos."""

from __future__ import annotations

import zipfile

import numpy as np
import PIL.Image
import pytest

from inbetweening import media
from inbetweening.utils import OUTPUT_MARK, InbetweeningError


def moving_square(frames: int = 9, h: int = 48, w: int = 64) -> np.ndarray:
    """(F, H, W, 3) float frames in [0, 1]: a bright square moving right over a gradient, every
    frame different from the last."""
    video = np.zeros((frames, h, w, 3), np.float32)
    video[..., 2] = np.linspace(0, 0.5, w)[None, None, :]
    for i in range(frames):
        x = 2 + 4 * i
        video[i, 10:26, x:x + 16] = (1.0, 0.9, 0.2)
    return video


def square_x(frame: np.ndarray) -> float:
    """Mean column of the square's bright pixels."""
    mask = (frame[..., 0] > 0.6 * 255) & (frame[..., 1] > 0.6 * 255)
    return float(np.nonzero(mask)[1].mean())


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_mp4_decodes_back_with_its_frames_size_and_rate(tmp_path):
    video = moving_square()
    out = media.write_video(video, tmp_path / "v.mp4", fps=12)
    frames, fps = media.read_video(out)
    assert frames.shape == (9, 48, 64, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(12)
    # H.264 is lossy but close, and the frames keep their order.
    assert np.abs(frames.astype(float) / 255 - video).mean() < 0.02
    xs = [square_x(f) for f in frames]
    np.testing.assert_allclose(xs, [9.5 + 4 * i for i in range(9)], atol=0.75)
    with open(out, "rb") as f:
        head = f.read(64)
    assert b"ftyp" in head  # an mp4 container
    import imageio.v3 as iio

    assert iio.immeta(out).get("codec", "h264").startswith("h264")


def test_mp4_of_odd_sized_frames_is_padded_to_even(tmp_path):
    video = moving_square(h=47, w=63)
    frames, _ = media.read_video(media.write_video(video, tmp_path / "odd.mp4", fps=7))
    assert frames.shape == (9, 48, 64, 3)
    assert np.abs(frames[:, :47, :63].astype(float) / 255 - video).mean() < 0.02


@pytest.mark.parametrize("kind", ["gif", "webp"])
def test_gif_and_webp_frame_counts_and_durations(tmp_path, kind):
    video = moving_square()
    out = media.write_video(video, tmp_path / f"v.{kind}", fps=10)
    with PIL.Image.open(out) as im:
        assert im.format == kind.upper() and im.is_animated and im.n_frames == 9
        assert im.info.get("loop") == 0  # plays on repeat
        durations, xs = [], []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()  # (webp sets the frame's duration when it is decoded)
            durations.append(im.info["duration"])
            xs.append(square_x(np.asarray(im.convert("RGB"))))
    assert durations == [100] * 9
    np.testing.assert_allclose(xs, [9.5 + 4 * i for i in range(9)], atol=0.5)
    frames, _ = media.read_video(out)
    assert frames.shape == (9, 48, 64, 3)
    if kind == "webp":  # lossless
        np.testing.assert_array_equal(frames, (video * 255).round().astype(np.uint8))


def test_gif_duration_follows_fps(tmp_path):
    out = media.write_video(moving_square(4), tmp_path / "slow.gif", fps=4)
    with PIL.Image.open(out) as im:
        assert im.info["duration"] == 250


def test_png_folder_and_zip_names_and_pixels(tmp_path):
    video = moving_square(12)
    expected = (video * 255).round().astype(np.uint8)
    folder = media.write_video(video, tmp_path / "frames", fps=7)
    names = [f"frame_{i:04d}.png" for i in range(12)]
    assert leftovers(folder) == [OUTPUT_MARK] + names  # the frames and the tool's hidden mark
    frames, fps = media.read_video(folder)
    np.testing.assert_array_equal(frames, expected)
    assert fps == 0  # a folder has no rate

    archive = media.write_video(video, tmp_path / "frames.zip", fps=7)
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == names
        with z.open(names[5]) as f:
            np.testing.assert_array_equal(np.asarray(PIL.Image.open(f).convert("RGB")),
                                          expected[5])
        assert {i.date_time for i in z.infolist()} == {media.ZIP_DATE}
    # The same frames make the same file, whenever they are written (render's resumed runs).
    again = media.write_video(video, tmp_path / "again.zip", fps=7)
    assert again.read_bytes() == archive.read_bytes()


def test_frames_as_pil_and_uint8(tmp_path):
    video = (moving_square(3) * 255).round().astype(np.uint8)
    media.write_video([PIL.Image.fromarray(f) for f in video], tmp_path / "pil", fps=7)
    media.write_video(list(video), tmp_path / "u8", fps=7)
    np.testing.assert_array_equal(media.read_video(tmp_path / "pil")[0], video)
    np.testing.assert_array_equal(media.read_video(tmp_path / "u8")[0], video)


@pytest.mark.parametrize("name", ["v.mp4", "v.gif", "v.webp", "v.zip", "frames"])
def test_no_overwrite_without_asking(tmp_path, name):
    path = tmp_path / name
    first = media.write_video(moving_square(3), path, fps=7)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(InbetweeningError, match="already exists.*--overwrite"):
        media.write_video(moving_square(5), path, fps=7)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    media.write_video(moving_square(5), path, fps=7, overwrite=True)
    if name == "v.zip":
        assert len(zipfile.ZipFile(first).namelist()) == 5
    else:
        assert len(media.read_video(first)[0]) == 5
    assert leftovers(tmp_path) == [name]  # nothing beside it


def fail_on_fourth_frame(monkeypatch, kind: str) -> None:
    """Make the writer of ``kind`` die at its fourth frame, after three were written."""
    calls = {"n": 0}

    def count():
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")

    if kind == "mp4":
        from imageio.plugins.ffmpeg import FfmpegFormat

        real_append = FfmpegFormat.Writer._append_data

        def append(self, im, meta):
            count()
            return real_append(self, im, meta)
        monkeypatch.setattr(FfmpegFormat.Writer, "_append_data", append)
    else:
        real_fromarray = PIL.Image.fromarray

        def fromarray(a, *args, **kw):
            count()
            return real_fromarray(a, *args, **kw)
        monkeypatch.setattr(PIL.Image, "fromarray", fromarray)


@pytest.mark.parametrize("name", ["v.mp4", "v.gif", "v.webp", "v.zip", "frames"])
def test_a_failed_write_leaves_nothing_behind(tmp_path, name, monkeypatch):
    """A writer that dies half-way leaves neither the output nor a temporary file, for every
    kind; an existing output being replaced is kept as it was."""
    kind = media.output_kind(name)
    with monkeypatch.context() as m:
        fail_on_fourth_frame(m, kind)
        with pytest.raises(OSError, match="disk full"):
            media.write_video(moving_square(6), tmp_path / name, fps=7)
    assert leftovers(tmp_path) == []

    existing = media.write_video(moving_square(2), tmp_path / name, fps=7)
    with monkeypatch.context() as m:
        fail_on_fourth_frame(m, kind)
        with pytest.raises(OSError, match="disk full"):
            media.write_video(moving_square(6), existing, fps=7, overwrite=True)
    assert leftovers(tmp_path) == [name]
    if kind == "zip":
        assert len(zipfile.ZipFile(existing).namelist()) == 2
    else:
        assert len(media.read_video(existing)[0]) == 2


def test_bad_outputs_and_frames_are_one_line_errors(tmp_path):
    with pytest.raises(InbetweeningError, match=r"\.mp4, \.gif, \.webp or \.zip"):
        media.write_video(moving_square(2), tmp_path / "v.avi")
    with pytest.raises(InbetweeningError, match="frame rate"):
        media.write_video(moving_square(2), tmp_path / "v.gif", fps=0)
    with pytest.raises(InbetweeningError, match="no frames"):
        media.write_video([], tmp_path / "v.gif")
    with pytest.raises(InbetweeningError, match="same size"):
        media.write_video([np.zeros((8, 8, 3)), np.zeros((8, 10, 3))], tmp_path / "v.gif")
    assert leftovers(tmp_path) == []
    assert media.check_output(tmp_path / "x.MP4", False) == "mp4"
    assert media.check_output(tmp_path / "x", False) == "png"


def test_side_by_side_puts_the_keyframes_beside_each_frame():
    video = moving_square(4)  # 48 x 64
    first = PIL.Image.new("RGB", (32, 24), (255, 0, 0))  # half size: scaled to the video's height
    last = np.zeros((96, 128, 3), np.uint8)
    last[..., 1] = 255
    sheet = media.side_by_side(video, [first, PIL.Image.new("RGB", (4, 4)), last], gap=4)
    assert sheet.shape == (4, 48, 64 + 4 + 64 + 4 + 64, 3)
    np.testing.assert_allclose(sheet[:, :, :64], np.broadcast_to([1, 0, 0], (4, 48, 64, 3)),
                               atol=1e-6)
    np.testing.assert_allclose(sheet[:, :, 68:132], video)
    np.testing.assert_allclose(sheet[:, :, -64:], np.broadcast_to([0, 1, 0], (4, 48, 64, 3)),
                               atol=1e-6)
    assert np.allclose(sheet[:, :, 64:68], 0.1)


def test_read_image_refuses_what_is_not_an_image(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InbetweeningError, match="notes.png: not an image file"):
        media.read_image(text)
    with pytest.raises(InbetweeningError, match="no such file"):
        media.read_image(tmp_path / "missing.png")
    with pytest.raises(InbetweeningError, match="is a folder"):
        media.read_image(tmp_path)
    big = tmp_path / "big.png"
    PIL.Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(InbetweeningError, match="300x200 is too large"):
        media.read_image(big, max_pixels=50_000)
    rgba = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(rgba)
    im = media.read_image(rgba)
    assert im.mode == "RGB" and im.size == (5, 4)


def test_image_size_reads_the_header_alone(tmp_path):
    """image_size: the size without decoding the pixels, and read_image's refusals of files
    that are no images; a file whose pixels are cut short passes (read_image refuses it)."""
    whole = tmp_path / "whole.png"
    PIL.Image.fromarray(np.zeros((48, 80, 3), np.uint8) + 7).save(whole)
    assert media.image_size(whole) == (80, 48) and media.image_size(whole).height == 48
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:60])
    assert media.image_size(cut) == (80, 48)
    with pytest.raises(InbetweeningError, match="cut.png: cannot read image"):
        media.read_image(cut)
    (tmp_path / "text.png").write_text("not an image")
    for name, words in (("text.png", "not an image file"), ("none.png", "no such file"),
                        ("", "is a folder")):
        with pytest.raises(InbetweeningError, match=words):
            media.image_size(tmp_path / name)
    with pytest.raises(InbetweeningError, match="too large"):
        media.image_size(whole, max_pixels=80 * 47)
