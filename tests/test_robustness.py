"""Bad input found by an adversarial pass: each gets a clear message before any long work, never a
traceback. ``inbetween train``: --resume of a file that is no checkpoint of this tool (and the
fallback past a damaged latest checkpoint), -o that is a file, empty, the current, home or data
folder. The app: PNG bombs and whatever else an image reader raises refused on upload, seeds beyond
2**64 - 1, sizes beyond what the machine can sample, and the work folder removed on SIGTERM."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from inbetweening import capacity, cli, media, training
from inbetweening.app import InbetweenApp, Limits
from inbetweening.toy.world import make_clips


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# -- inbetween train ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    """Two toy clips (8 frames, 64x64) as PNG frame folders."""
    root = tmp_path_factory.mktemp("clips")
    video = make_clips(0, 2).video.permute(0, 1, 3, 4, 2).numpy()
    for i, v in enumerate(video):
        media.write_video(v, root / f"clip{i}")
    return root


def train_args(model_dir, data, out, *more) -> list[str]:
    return ["train", "--model", str(model_dir / "model"), "--data", str(data), "-o", str(out),
            "--stride", "1", "--steps", "2", "--checkpoint-every", "1", "--sample-every", "0",
            "--device", "cpu", "--no-progress", *more]


@pytest.fixture
def no_model(monkeypatch):
    """Loading the base model is the long work: a refusal must come before it."""
    def load_base(*a, **k):
        raise AssertionError("the model was loaded before the input was refused")
    monkeypatch.setattr(training, "load_base", load_base)


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _a_checkpoint(tmp_path: Path) -> Path:
    """A file as torch.save writes a checkpoint (what it holds does not matter once truncated)."""
    path = tmp_path / "step-0000004.pt"
    torch.save({"step": 4, "weights": {"w": torch.zeros(64, 64)}}, path)
    truncated(path)
    return path


@pytest.mark.parametrize("case", ["text", "backward-weights", "truncated", "a-dict"])
def test_resume_from_a_file_that_is_not_a_checkpoint_is_refused_before_training(
        case, clips_dir, tmp_path, tiny_model_dir, no_model, capsys):
    if case == "text":
        bad = tmp_path / "notes.pt"
        bad.write_text("not a checkpoint\n")
    elif case == "backward-weights":
        bad = tiny_model_dir / "backward.safetensors"
    elif case == "truncated":
        bad = _a_checkpoint(tmp_path)
    else:  # a torch file, but not what inbetween train writes
        bad = tmp_path / "other.pt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    out = tmp_path / "run"
    assert cli.main(train_args(tiny_model_dir, clips_dir, out, "--resume", str(bad))) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "not a checkpoint of inbetween train" in line, line
    assert not out.exists()


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(clips_dir, tmp_path,
                                                                   tiny_model_dir, capsys):
    out = tmp_path / "run"
    assert cli.main(train_args(tiny_model_dir, clips_dir, out)) == 0
    first, latest = training.checkpoints(out)
    truncated(latest)
    capsys.readouterr()
    assert cli.main(train_args(tiny_model_dir, clips_dir, out, "--resume", "--steps", "3")) == 0
    said = capsys.readouterr().out.splitlines()
    notes = [s for s in said if s.startswith("note:")]
    assert len(notes) == 1 and latest.name in notes[0] and first.name in notes[0], said
    assert any(s.startswith(f"resuming from {first} (step 1)") for s in said), said
    with (out / "log.csv").open() as f:
        assert [row.split(",")[0] for row in f.read().splitlines()[1:]] == ["1", "2", "3"]
    assert [p.name for p in training.checkpoints(out)] == ["step-0000002.pt", "step-0000003.pt"]
    assert torch.load(training.checkpoints(out)[0], weights_only=True)["step"] == 2  # again


def test_resume_with_no_readable_checkpoint_is_refused(clips_dir, tmp_path, tiny_model_dir,
                                                       no_model, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for step in (1, 2):
        (out / "checkpoints" / f"step-{step:07d}.pt").write_text("damaged\n")
    assert cli.main(train_args(tiny_model_dir, clips_dir, out, "--resume")) == 2
    line = one_error_line(capsys)
    assert "no readable checkpoint" in line and "--overwrite" in line, line


@pytest.mark.parametrize("case", ["file", "file-parent", "empty", "current", "home", "data",
                                  "holds-data"])
def test_unusable_output_folders_are_refused_before_loading_the_model(
        case, tmp_path, tiny_model_dir, no_model, monkeypatch, capsys):
    data = tmp_path / "inside" / "data"
    data.mkdir(parents=True)
    media.write_video(make_clips(0, 1).video[0].permute(0, 2, 3, 1).numpy(), data / "c")
    plain = tmp_path / "plain.txt"
    plain.write_text("the user's file\n")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    out, why = {"file": (plain, "is a file"), "file-parent": (plain / "run", "is a file"),
                "empty": ("", "empty"), "current": (".", "current folder"),
                "home": (home, "home folder"), "data": (data, "one of the inputs"),
                "holds-data": (tmp_path / "inside", "holds the input")}[case]
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert cli.main(train_args(tiny_model_dir, data, out, *extra)) == 2, extra
        line = one_error_line(capsys)
        assert why in line, (extra, line)
    assert plain.read_text() == "the user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "inside", "plain.txt"]
    assert list(home.iterdir()) == [] and [p.name for p in data.iterdir()] == ["c"]


def test_overwrite_removes_only_the_runs_own_samples(tmp_path):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "step-0000001.mp4").write_bytes(b"ours")
    (out / "samples" / "holiday.mp4").write_bytes(b"the user's")
    training._clear(out)
    assert [p.name for p in (out / "samples").iterdir()] == ["holiday.mp4"]
    (out / "samples" / "holiday.mp4").unlink()
    (out / "samples" / "step-0000002.mp4").write_bytes(b"ours")
    training._clear(out)
    assert not (out / "samples").exists()


# -- the app ---------------------------------------------------------------------------------------

def png_bomb(path: Path, width: int = 20_000, height: int = 20_000) -> str:
    """A tiny PNG whose header claims ``width`` x ``height`` (1-bit grey, all zero)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\0" * (1 + (width + 7) // 8)
    body = zlib.compress(row * 64, 9)  # the first rows only: a bomb need not be complete
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                         1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


def save(im: np.ndarray, path) -> str:
    PIL.Image.fromarray(im).save(path)
    return str(path)


@pytest.fixture
def keys(tmp_path):
    rng = np.random.default_rng(1)
    return [save(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / f"key{i}.png")
            for i in range(2)]


@pytest.fixture
def app(tiny_pipe, tmp_path):
    return InbetweenApp(tiny_pipe, tmp_path / "work", Limits(), "a tiny test model")


def test_a_png_bomb_upload_is_refused_on_the_page(app, keys, tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    kept, notice = app.on_upload([keys[0], bomb, keys[1]])
    assert kept == keys
    assert "Refused 1 upload" in notice and "bomb.png: " in notice and "too large" in notice
    assert not os.path.exists(bomb)  # refused uploads are deleted
    assert [c for _, c in app.preview([keys[0], png_bomb(tmp_path / "b2.png")])] == ["1: key0.png"]


@pytest.mark.parametrize("error", [zlib.error("invalid distance too far back"),
                                   MemoryError(), RuntimeError("decoder exploded")])
def test_any_failure_to_read_an_upload_is_a_refusal(error, app, keys, tmp_path, monkeypatch):
    """Whatever a reader raises for some file, the page says so and drops the file (a handler that
    raises shows Gradio's raw error toast instead, and the file stays in the list)."""
    real = media.read_image

    def read_image(path, **kw):
        if Path(path).name == "odd.png":
            raise error
        return real(path, **kw)

    monkeypatch.setattr(media, "read_image", read_image)
    odd = save(np.zeros((64, 64, 3), np.uint8), tmp_path / "odd.png")
    kept, notice = app.on_upload([keys[0], odd, keys[1]])
    assert kept == keys and "Refused 1 upload" in notice and "odd.png: cannot read" in notice
    assert str(tmp_path) not in notice
    _, _, message = app.generate([keys[0], save(np.zeros((64, 64, 3), np.uint8), odd)],
                                 "gi", 4, 1, 0, "64x64", 7)
    assert message.startswith("**Error:** odd.png: cannot read"), message


@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling is the long work: a refusal must come before it."""
    import inbetweening.keyframes

    def inbetween_sequence(*a, **k):
        raise AssertionError("sampling started")
    monkeypatch.setattr(inbetweening.keyframes, "inbetween_sequence", inbetween_sequence)


@pytest.mark.parametrize("seed", [2**64, 2**70, "1e30", float("inf"), float("nan")])
def test_seeds_out_of_range_get_a_clear_message(seed, app, keys, no_sampling):
    _, _, message = app.generate(keys, "gi", 4, 1, seed, "64x64", 7)
    assert message.startswith("**Error:** "), message
    assert "something went wrong" not in message
    assert "seed must be" in message, message


def test_the_largest_seed_works(app, keys):
    _, _, message = app.generate(keys, "gi", 4, 1, 2**64 - 1, "64x64", 7)
    assert message.startswith("**Done:**") and f"seed {2**64 - 1}" in message, message


def test_a_size_beyond_the_memory_limit_is_refused_with_the_reason(app, keys, no_sampling):
    """On the CPU the limit is 4x the model's usual work: 64x64 x 6 frames for the tiny model."""
    limit, _ = capacity.pixel_frame_limit(app.pipe)
    assert limit == 4 * 64 * 64 * 6
    _, _, message = app.generate(keys, "gi", 6, 1, 0, "1024x1024", 7)
    assert message.startswith("**Error:** 1024x1024 x 6 frames is too large"), message
    assert f"{limit:,}" in message and "the CPU" in message, message
    _, _, message = app.generate(keys, "gi", 12, 1, 0, "192x64", 7)  # 1.5x the limit
    assert "too large" in message
    _, _, message = app.generate(keys, "gi", 12, 1, 0, "128x64", 7)  # exactly the limit
    assert "sampling started" in message  # (passed the check; the fixture stops it there)


def test_the_limit_on_a_gpu_follows_its_free_memory(monkeypatch):
    """pixels x frames <= free bytes / (bytes of a dtype x 8 x the VAE decoder's channels at full
    resolution), and never below the model's usual work."""
    pipe = SimpleNamespace(
        device=torch.device("cuda", 0),
        call_settings=lambda: ({"width": 1024, "height": 576, "num_frames": 14}, []),
        vae=SimpleNamespace(dtype=torch.float16, config=SimpleNamespace(
            block_out_channels=[128, 256, 512, 512])))
    monkeypatch.setattr(capacity, "free_device_memory", lambda device: 64 * 2**30)
    limit, basis = capacity.pixel_frame_limit(pipe)
    assert limit == 64 * 2**30 // (2 * 8 * 128) and basis == "the free memory of cuda:0 (64.0 GB)"
    monkeypatch.setattr(capacity, "free_device_memory", lambda device: 2**20)
    assert capacity.pixel_frame_limit(pipe)[0] == 1024 * 576 * 14


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def media_png() -> bytes:
    import io

    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _upload(port: int, name: str, data: bytes) -> str:
    """POST a file to the Gradio server as the page does; the path it was stored at."""
    import json
    import urllib.request

    boundary = "inbetweening-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/gradio_api/upload", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())[0]


def test_sigterm_removes_the_apps_work_folder(tiny_model_dir, tmp_path):
    """... and Gradio's folders: nothing is left in the temporary folder (issue 20, item 9)."""
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    cmd = [sys.executable, "-m", "inbetweening.cli", "app", "--port", str(port), "--device",
           "cpu", "--model", str(tiny_model_dir / "model"),
           "--backward", str(tiny_model_dir / "backward.safetensors")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 120
        while not _listening(port):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "the app did not listen within 120 s"
            time.sleep(0.5)
        assert len(list(tmp.glob("inbetween-app-*"))) == 1  # (what is checked is there)
        uploaded = _upload(port, "key.png", media_png())
        assert Path(uploaded).resolve().is_relative_to(tmp.resolve()), uploaded
        proc.send_signal(15)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in output, output[-3000:]
    assert list(tmp.glob("inbetween-app-*")) == [], output[-3000:]
    assert sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) == [], output[-3000:]
