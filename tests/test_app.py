"""The web app's handlers, without a browser (tests/e2e drives the page itself): uploads refused
with a reason (not an image, too many bytes, too many pixels), videos through several keyframes
with progress and the three downloads, loops, bad requests answered with a message while the app
goes on serving, defaults from the model, and the command's options."""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np
import PIL.Image
import pytest

from inbetweening import cli, media
from inbetweening.app import InbetweenApp, Limits, check_upload

gradio = pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")


def save(im: np.ndarray, path) -> str:
    PIL.Image.fromarray(im).save(path)
    return str(path)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A text file named .png, a 50 MB image (a noise BMP) and a small file of 30 megapixels."""
    root = tmp_path_factory.mktemp("bad")
    text = root / "notes.png"
    text.write_text("these are notes, not a picture\n")
    rng = np.random.default_rng(0)
    huge = save(rng.integers(0, 256, (4200, 4200, 3), dtype=np.uint8), root / "huge.bmp")
    assert os.path.getsize(huge) > 50 * 2**20
    wide = root / "wide.png"
    PIL.Image.new("RGB", (6000, 5000), (20, 40, 60)).save(wide)
    assert os.path.getsize(wide) < 2**20
    return {"text": str(text), "huge": huge, "pixels": str(wide)}


@pytest.fixture
def keys(tmp_path):
    rng = np.random.default_rng(1)
    return [save(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / f"key{i}.png")
            for i in range(3)]


@pytest.fixture
def app(tiny_pipe, tmp_path):
    return InbetweenApp(tiny_pipe, tmp_path / "work", Limits(), "a tiny test model")


def copies(paths, folder) -> list[str]:
    """Uploads are deleted when refused: hand the handler copies."""
    import shutil

    folder.mkdir(exist_ok=True)
    return [str(shutil.copy(p, folder / os.path.basename(p))) for p in paths]


def test_uploads_that_are_not_usable_images_are_refused_with_a_reason(app, keys, bad_files,
                                                                      tmp_path):
    uploads = copies([keys[0], bad_files["text"], bad_files["huge"], keys[1],
                      bad_files["pixels"]], tmp_path / "uploads")
    kept, notice = app.on_upload(uploads)
    assert kept == [uploads[0], uploads[3]]  # the good ones, in their order
    assert "Refused 3 uploads" in notice
    assert "notes.png: not an image file" in notice
    assert "huge.bmp: 50.5 MB is larger than the 20 MB upload limit" in notice
    assert "wide.png: 6000x5000 is too large (at most 25,000,000 pixels)" in notice
    assert str(tmp_path) not in notice  # file names, not the server's paths
    assert sorted(os.listdir(tmp_path / "uploads")) == ["key0.png", "key1.png"]  # refused: deleted
    assert app.on_upload(kept) == (kept, "")
    assert [c for _, c in app.preview(kept)] == ["1: key0.png", "2: key1.png"]
    assert app.count_message(kept).startswith("2 keyframes")
    assert "add at least one more" in app.count_message(kept[:1])


def test_limits_are_settings(keys, bad_files):
    small = Limits(max_bytes=4000, max_pixels=10_000)
    with pytest.raises(Exception, match=r"key0.png: .* larger than the .* MB upload limit"):
        check_upload(keys[0], small)
    check_upload(keys[0], Limits(max_bytes=20_000, max_pixels=64 * 64))
    with pytest.raises(Exception, match="64x64 is too large"):
        check_upload(keys[0], Limits(max_pixels=64 * 63))
    assert check_upload(bad_files["huge"], Limits(max_bytes=60 * 2**20)).size == (4200, 4200)


def test_generate_through_three_keyframes_with_progress_and_downloads(app, keys):
    seen = []

    class Progress:
        """Like gr.Progress: callable, and of length 0 (falsy) until it tracks an iterable."""

        def __len__(self):
            return 0

        def __call__(self, fraction, desc=None):
            seen.append((fraction, desc))

    video, downloads, message = app.generate(keys, "gi", 4, 2, 3, "64x64", 5,
                                             progress=Progress())
    assert message.startswith("**Done:** 7 frames, 64x64, 5 fps, seed 3"), message
    mp4, gif, zip_ = downloads
    assert video == mp4 and mp4.endswith(".mp4") and gif.endswith(".gif")
    frames, fps = media.read_video(mp4)
    assert frames.shape == (7, 64, 64, 3) and fps == pytest.approx(5)
    with PIL.Image.open(gif) as im:
        assert im.n_frames == 7 and im.info["duration"] == 200
    with zipfile.ZipFile(zip_) as z:
        assert z.namelist() == [f"frame_{i:04d}.png" for i in range(7)]
        with z.open("frame_0003.png") as f:
            middle = np.asarray(PIL.Image.open(f))
    # The zip holds the frames exactly; the mp4 is their lossy encoding.
    assert np.abs(frames[3].astype(int) - middle.astype(int)).mean() < 8
    # Progress: per denoising step of each segment, rising to 1.
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    descs = [d for _, d in seen]
    for d in ("segment 1/2", "segment 1/2, step 2/2", "segment 2/2, step 1/2",
              "segment 2/2, step 2/2"):
        assert d in descs
    assert (0.75, "segment 2/2, step 1/2") in seen

    # The same seed again gives the same frames; each result has its own folder.
    _, again, _ = app.generate(keys, "gi", 4, 2, 3, "64x64", 5)
    assert again[2] != zip_
    with zipfile.ZipFile(zip_) as a, zipfile.ZipFile(again[2]) as b:
        assert all(a.read(n) == b.read(n) for n in a.namelist())


def test_generate_in_a_memory_setting(app, keys):
    """The page's memory choice switches the pipeline's setting before the run; a name that is
    not one is refused with a message."""
    _, _, message = app.generate(keys[:2], "gi", 4, 1, 3, "64x64", 5, memory="lowest")
    assert message.startswith("**Done:**") and app.pipe.memory == "lowest"
    _, _, message = app.generate(keys[:2], "gi", 4, 1, 3, "64x64", 5, memory="huge")
    assert message.startswith("**Error:** unknown memory setting 'huge'")
    assert app.pipe.memory == "lowest"


def test_loop_side_by_side_and_random_seed(app, keys):
    video, _, message = app.generate(keys[:2] + [keys[0]], "trf", 4, 1, -1, "64x64", 7,
                                     side_by_side=True)
    assert "6 frames" in message and "a seamless loop" in message
    assert "seed -1" not in message and "seed " in message
    frames, _ = media.read_video(video)
    assert frames.shape == (6, 64, 64 * 3 + 8, 3)
    _, _, message = app.generate(keys[:1], "gi", 4, 1, 0, "64x64", 7, loop=True)
    assert "3 frames" in message and "a seamless loop" in message


def test_bad_requests_get_a_message_and_the_app_keeps_serving(app, keys, tmp_path, monkeypatch):
    wide = save(np.zeros((32, 64, 3), np.uint8), tmp_path / "wide.png")
    gone = tmp_path / "gone.png"
    cases = {
        "upload at least two keyframes": ([keys[0]], {}),
        "different aspect ratios": ([keys[0], wide], {}),
        "not a multiple of 8": (keys[:2], {"size": "65x64"}),
        "size must look like": (keys[:2], {"size": "big"}),
        "this model takes 3 to 12 frames": (keys[:2], {"frames": 40}),
        "steps must be a number": (keys[:2], {"steps": None}),
        "unknown method|invalid choice|method": (keys[:2], {"method": "nope"}),
        "gone.png: the upload is missing": ([keys[0], str(gone)], {}),
    }
    settings = dict(method="gi", frames=4, steps=1, seed=0, size="64x64", fps=7)
    for expected, (files, changes) in cases.items():
        video, downloads, message = app.generate(files, **{**settings, **changes})
        assert video is None and downloads is None
        assert message.startswith("**Error:**"), message
        assert re.search(expected, message), (expected, message)

    # An unexpected failure inside the pipeline is reported too, and the next request works.
    import inbetweening.keyframes

    def broken(*a, **k):
        raise RuntimeError("the GPU caught fire")
    monkeypatch.setattr(inbetweening.keyframes, "inbetween_sequence", broken)
    _, _, message = app.generate(keys[:2], **settings)
    assert "something went wrong (RuntimeError: the GPU caught fire)" in message
    monkeypatch.undo()
    video, downloads, message = app.generate(keys[:2], **settings)
    assert message.startswith("**Done:** 4 frames") and len(downloads) == 3


def test_defaults_come_from_the_model(app, tiny_pipe):
    assert app.defaults() == dict(method="gi", frames=6, steps=50, size="64x64", fps=7,
                                  motion_bucket=127, noise_aug=0.02)
    # a method picked shows its own settings
    assert (app.defaults("trf")["steps"], app.defaults("mpd")["fps"]) == (50, 9)
    assert app.max_frames() == 12
    tiny_pipe.defaults = {"num_inference_steps": 12, "num_frames": 5, "max_guidance_scale": 2.0,
                          "fps": 4}
    assert app.defaults() == dict(method="gi", frames=5, steps=12, size="64x64", fps=4,
                                  motion_bucket=127, noise_aug=0.02)
    kw, _ = tiny_pipe.call_settings(**app.sampling_options("trf", 6, 3, "128x64", 9).call_kwargs())
    assert kw["max_guidance_scale"] == 2.0  # the model's recommendation stays ...
    assert (kw["method"], kw["num_frames"], kw["num_inference_steps"], kw["fps"],
            kw["width"], kw["height"]) == ("trf", 6, 3, 9, 128, 64)  # ... under what was asked
    kw, _ = tiny_pipe.call_settings(**app.sampling_options("gi", 6, 8, "64x64", 7,
                                                           recipe="paper").call_kwargs())
    assert (kw["num_inference_steps"], kw["reinject_count"], kw["reinject_fraction"]) == (8, 5, 0.5)


def test_page_is_built_offline(app):
    page = app.build()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert isinstance(page, gradio.Blocks)
    ids = {c.elem_id: c for c in page.blocks.values() if getattr(c, "elem_id", None)}
    for name in ("keyframes", "order", "notice", "status", "method", "size", "frames", "steps",
                 "recipe",
                 "seed", "fps", "loop", "side-by-side", "generate", "result", "downloads",
                 "message", "memory"):
        assert name in ids, name
    assert ids["memory"].value == "default"
    assert ids["keyframes"].allow_reordering and ids["keyframes"].file_count == "multiple"
    assert ids["method"].value == "gi" and ids["steps"].value == 50


def test_the_app_command_and_its_options():
    args = cli.build_parser().parse_args(["app"])
    assert (args.host, args.port, args.max_upload_mb, args.max_pixels) == \
        ("127.0.0.1", None, 20.0, 25_000_000)
    args = cli.build_parser().parse_args(
        ["app", "--host", "0.0.0.0", "--port", "8000", "--model", "m", "--backward", "b.st",
         "--device", "cpu", "--dtype", "fp32", "--max-upload-mb", "5"])
    assert (args.host, args.port, args.model, args.backward, args.device, args.dtype,
            args.max_upload_mb) == ("0.0.0.0", 8000, "m", "b.st", "cpu", "fp32", 5.0)
    assert cli.main(["app", "--max-upload-mb", "0"]) == 2
    assert cli.build_parser().parse_args(["app", "--memory", "low"]).memory == "low"
