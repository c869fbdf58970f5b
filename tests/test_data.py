"""Training clips from folders of videos and frame folders (inbetweening.data)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from inbetweening import media
from inbetweening.data import ClipDataset, fit_frame
from inbetweening.utils import InbetweeningError


def numbered_frames(n: int, size=(64, 48)) -> np.ndarray:
    """n frames whose every pixel holds its frame number * 10 (readable back after PNG)."""
    w, h = size
    return np.stack([np.full((h, w, 3), i * 10, np.uint8) for i in range(n)])


def frame_folder(path, frames: np.ndarray, name="frame_{:d}.png"):
    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        PIL.Image.fromarray(f).save(path / name.format(i))
    return path


def frame_numbers(clip) -> list[int]:
    """Frame numbers of a clip item ((F, 3, H, W) in [-1, 1]) made from numbered_frames."""
    return [round(float(((f + 1) * 127.5).mean()) / 10) for f in clip]


def test_clips_at_a_stride_from_a_frame_folder_in_natural_order(tmp_path):
    # frame_2.png must come before frame_10.png
    frame_folder(tmp_path / "data" / "seq", numbered_frames(20))
    ds = ClipDataset(tmp_path / "data", num_frames=4, size=(64, 48), stride=2)
    assert ds.span == 7
    assert len(ds) == 2  # non-overlapping windows of 7 frames: 0..6, 7..13
    assert frame_numbers(ds[0]) == [0, 2, 4, 6]
    assert frame_numbers(ds[1]) == [7, 9, 11, 13]
    clip = ds[0]
    assert clip.shape == (4, 3, 48, 64) and clip.min() >= -1 and clip.max() <= 1


def test_videos_of_every_kind_and_nested_folders(tmp_path):
    frames = numbered_frames(9, size=(64, 64))
    data = tmp_path / "data"
    media.write_video(frames, data / "a.gif")
    media.write_video(frames, data / "sub" / "b.mp4")
    frame_folder(data / "sub" / "deeper" / "c", frames)
    ds = ClipDataset(data, num_frames=3, size=(64, 64), stride=4)  # span 9: one clip each
    assert len(ds) == 3
    assert sorted(s.path.name for s in ds.report.sources) == ["a.gif", "b.mp4", "c"]
    for i in range(3):
        got = frame_numbers(ds[i])
        assert got == [0, 4, 8], (ds.describe(i), got)  # mp4 is lossy, but not that lossy


def test_resize_covers_then_centre_crops():
    # 128x64 (W x H) frame: left quarter red, middle half green, right quarter blue
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[:, :32, 0] = 255
    frame[:, 32:96, 1] = 255
    frame[:, 96:, 2] = 255
    out = fit_frame(frame, (32, 32))  # scale to 64x32, crop the middle 32 columns: all green
    assert out.shape == (32, 32, 3)
    assert out[..., 1].min() > 200 and out[..., 0].max() < 40 and out[..., 2].max() < 40
    small = fit_frame(frame[:16, :32], (64, 64))  # upscaled to cover
    assert small.shape == (64, 64, 3)


def test_short_and_unreadable_videos_are_skipped_with_a_count(tmp_path):
    data = tmp_path / "data"
    frame_folder(data / "good", numbered_frames(8))
    frame_folder(data / "short", numbered_frames(3))
    media.write_video(numbered_frames(2, (64, 64)), data / "short.gif")
    (data / "broken.mp4").write_bytes(b"this is not a video")
    bad = frame_folder(data / "bad_frames", numbered_frames(8))
    (bad / "frame_3.png").write_bytes(b"nor is this an image")
    ds = ClipDataset(data, num_frames=4, size=(64, 48), stride=2)
    assert len(ds) == 1 and ds.report.sources[0].path.name == "good"
    assert len(ds.report.too_short) == 2 and len(ds.report.unreadable) == 2
    assert "skipped 2 too short, 2 unreadable" in ds.summary()


def test_nothing_usable_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InbetweeningError, match="no videos or frame folders"):
        ClipDataset(empty, num_frames=8, size=(64, 64))
    with pytest.raises(InbetweeningError, match="not found"):
        ClipDataset(tmp_path / "missing", num_frames=8, size=(64, 64))
    data = tmp_path / "short"
    frame_folder(data / "a", numbered_frames(8))
    # 8 frames at stride 2 need 15; stride 1 would do
    with pytest.raises(InbetweeningError, match=r"1 too short.*needs 15 frames.*try --stride 1"):
        ClipDataset(data, num_frames=8, size=(64, 64), stride=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.mov").write_bytes(b"\x00" * 100)
    with pytest.raises(InbetweeningError, match="1 unreadable"):
        ClipDataset(broken, num_frames=8, size=(64, 64))
