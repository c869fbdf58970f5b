"""Every command's input guarded (issue 20, items 3-7, 9, 10): numbers out of range or not finite,
devices this machine lacks, outputs that cannot be written, sizes beyond the machine, keyframes
that are not regular files, oversized PNG text, refused runs that leave files in the home folder
or the app's temporary folder, and evaluation without its extra: each refused in one line, exit
status 2, before the work that the fixtures below make fail if it starts."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest

import inbetweening.keyframes
import inbetweening.loading
from inbetweening import cli, media, training
from inbetweening.app import Limits
from inbetweening.commands.app import AppSettings
from inbetweening.commands.demo import DemoSettings
from inbetweening.evaluation.set_options import WORLD_NAMES, ToySetOptions, VideoSetOptions
from inbetweening.options import SamplingOptions, scalar_type
from inbetweening.toy.world import WORLDS, make_clips
from inbetweening.train_config import TrainConfig
from inbetweening.utils import InbetweeningError


class WorkStarted(Exception):
    """Raised by a fixture where the long work would start: a refusal must come before it."""


def work_started(*a, **k):
    raise WorkStarted


def one_error_line(capsys, code: int) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def refused(capsys, argv) -> str:
    return one_error_line(capsys, cli.main([str(a) for a in argv]))


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model, sampling, training and drawing toy clips all raise WorkStarted."""
    import inbetweening.app
    import inbetweening.evaluation.run
    from inbetweening.toy import world

    for module, name in [(inbetweening.loading, "load_pipeline"), (training, "load_base"),
                         (inbetweening.keyframes, "inbetween_sequence"), (world, "make_clip"),
                         (inbetweening.app, "serve"), (inbetweening.evaluation.run, "generate")]:
        monkeypatch.setattr(module, name, work_started)


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> Path:
    from inbetweening.evaluation import make_toy_set

    return make_toy_set(tmp_path_factory.mktemp("sets") / "set", 1)


@pytest.fixture
def keys(tmp_path) -> list[Path]:
    g = np.random.default_rng(0)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in paths:
        PIL.Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    return paths


def interpolate(keys, out, tiny_model_dir, *more) -> list:
    return ["interpolate", *keys, "-o", out, "--model", tiny_model_dir / "model", "--backward",
            tiny_model_dir / "backward.safetensors", "--steps", "1", *more]


# -- item 3: every numeric option through one validation ------------------------------------------

OPTION_CLASSES = [SamplingOptions, TrainConfig, ToySetOptions, VideoSetOptions, AppSettings,
                  DemoSettings, Limits]


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_option_has_a_range(cls):
    hints = typing.get_type_hints(cls)
    numeric = [f.name for f in dataclasses.fields(cls)
               if scalar_type(hints[f.name]) in (int, float)]
    assert numeric and all("range" in f.metadata for f in dataclasses.fields(cls)
                           if f.name in numeric), [n for n in numeric]


TRAIN_REFUSALS = [  # the list: tracebacks and values silently accepted
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "1e308"), ("--weight-decay", "-1"),
    ("--p-mean", "nan"), ("--p-mean", "inf"), ("--p-std", "nan"), ("--grad-clip", "nan"),
    ("--grad-clip", "0"), ("--grad-clip", "-1"), ("--noise-aug", "nan"), ("--noise-aug", "-1"),
    ("--sigma-set", "nan"), ("--sigma-set", "1,-2"), ("--fps", "0"), ("--fps", "-5"),
    ("--warmup", "-1"), ("--seed", "-1"), ("--frames", "0"), ("--sample-steps", "0"),
    ("--sample-every", "-1"), ("--stop-after", "-1"), ("--size", ""), ("--sigma-set", ""),
]


@pytest.mark.parametrize("flag, value", TRAIN_REFUSALS)
def test_train_refuses_bad_numbers_before_any_work(flag, value, toy_clips_dir, tmp_path,
                                                   tiny_model_dir, no_work, capsys):
    out = tmp_path / "run"
    line = refused(capsys, ["train", "--model", tiny_model_dir / "model", "--data", toy_clips_dir,
                            "-o", out, "--stride", "1", "--steps", "2", "--device", "cpu",
                            "--no-progress", flag, value])
    assert flag.lstrip("-") in line, line
    assert not out.exists()


def test_the_library_checks_a_train_config_the_same_way(toy_clips_dir, tmp_path):
    cfg = TrainConfig(data=str(toy_clips_dir), output=str(tmp_path / "run"), lr=float("nan"))
    with pytest.raises(InbetweeningError, match="lr must be a finite number"):
        training.train(cfg)
    with pytest.raises(InbetweeningError, match="steps must be a whole number"):
        TrainConfig(steps=2.5).check()
    assert not (tmp_path / "run").exists()


def test_help_shows_the_ranges_and_the_machines_bounds(capsys):
    for argv, shown in [(["train"], "--steps STEPS optimizer steps (1 to 10,000,000)"),
                        (["train"], "--lr LR AdamW learning rate (over 0, up to 1)"),
                        (["interpolate"], "(3 to 1,024)"),
                        (["interpolate"], "on the CPU 4x the model's usual work"),
                        (["benchmark", "toy"], "--n N number of pairs (1 to 10,000)"),
                        (["benchmark", "toy"], "about 1.6 GB of files"),
                        (["benchmark", "make"], "--gap GAP frames between the keyframes (2 to"),
                        (["evaluate"], "base seed (between 0 and 2^64-1)"),
                        (["demo"], "--pairs PAIRS keyframe pairs (1 to 100)"),
                        (["app"], "--port PORT port (default: 7860, or the next free one) (1 to")]:
        assert cli.main([*argv, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert shown in text, (argv, shown)


@pytest.mark.parametrize("argv, words", [
    (["benchmark", "toy", "--n", "0"], "n must be between 1 and 10,000"),
    (["benchmark", "toy", "--seed", "-1"], "seed must be between"),
    (["benchmark", "make", "--videos", ".", "--gap", "0"], "gap must be between 2"),
    (["benchmark", "make", "--videos", ".", "--pairs-per-video", "-1"], "pairs-per-video"),
    (["benchmark", "make", "--videos", ".", "--frames", "0"], "frames must be between 3"),
    (["evaluate", "SET", "--seed", "-1"], "seed must be between 0"),  # (before SET is read)
    (["demo", "--pairs", "0"], "pairs must be between 1 and 100"),
    (["demo", "--steps", "0"], "steps must be between 1"),
    (["demo", "--seed", "-1"], "seed must be between 0"),
    (["app", "--max-upload-mb", "nan"], "max-upload-mb must be a finite number"),
    (["app", "--max-pixels", "0"], "max-pixels must be between 1"),
    (["app", "--port", "0"], "port must be between 1 and 65,535"),
])
def test_the_other_commands_refuse_bad_numbers_before_any_work(argv, words, tmp_path, no_work,
                                                               monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = ["--out", tmp_path / "out"] if argv[0] in ("benchmark", "evaluate") else \
        ["-o", tmp_path / "out"] if argv[0] == "demo" else []
    assert words in refused(capsys, [*argv, *out])
    assert sorted(tmp_path.iterdir()) == []


# -- item 4: devices this machine or this torch lacks -------------------------------------------

@pytest.mark.parametrize("device, words", [("mps", "no MPS"), ("cpu:99", "no such device"),
                                           ("cuda:7", "cuda")])
def test_a_device_this_machine_lacks_is_one_error_line(device, words, keys, tmp_path,
                                                       tiny_model_dir, capsys):
    out = tmp_path / "out.mp4"
    line = refused(capsys, interpolate(keys, out, tiny_model_dir, "--device", device))
    assert words in line and device in line, line
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_train_on_cuda_without_a_gpu_is_refused(toy_clips_dir, tmp_path, tiny_model_dir, no_work,
                                                capsys):
    line = refused(capsys, ["train", "--model", tiny_model_dir / "model", "--data", toy_clips_dir,
                            "-o", tmp_path / "run", "--device", "cuda"])
    assert "no CUDA GPU" in line and not (tmp_path / "run").exists()


# -- item 5: an output folder that cannot be written, before the model loads ---------------------

def unwritable_folders(tmp_path) -> list[Path]:
    """/proc (where nothing can be made, even by root) and, when not root, a read-only folder."""
    found = [Path("/proc")] if Path("/proc/self").exists() else []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        found.append(locked)
    if not found:
        pytest.skip("no folder here refuses writes")
    return found


WRITERS = {  # command -> argv writing into FOLDER/NAME
    "interpolate": lambda out, k, m: interpolate(k, out / "x.mp4", m),
    "interpolate-frames": lambda out, k, m: interpolate(k, out / "frames", m),
    "demo": lambda out, k, m: ["demo", "-o", out / "demo", "--model", m / "model"],
    "train": lambda out, k, m: ["train", "--data", k[0].parent, "-o", out / "run", "--model",
                                m / "model", "--device", "cpu"],
    "benchmark toy": lambda out, k, m: ["benchmark", "toy", "--n", "1", "--out", out / "set"],
    "evaluate": lambda out, k, m: ["evaluate", k[0].parent / "set", "--methods", "crossfade",
                                   "--out", out / "results"],
    "convert-official": lambda out, k, m: ["convert-official", m / "model" / "unet", "-o",
                                           out / "b.safetensors"],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
        command, keys, toy_set, tmp_path, tiny_model_dir, no_work, capsys):
    (tmp_path / "set").symlink_to(toy_set)
    for folder in unwritable_folders(tmp_path):
        line = refused(capsys, WRITERS[command](folder, keys, tiny_model_dir))
        assert f"cannot write into {folder}" in line, line


# -- item 6: bounds that keep a command within this machine --------------------------------------

@pytest.mark.parametrize("more, words", [
    (["--size", "65536x65536"], "size must be between 64 and 512"),
    (["--size", "512x512", "--frames", "16"], "too large"),
    (["--n", "1000000000000"], "n must be between 1 and 10,000"),
    (["--n", "10000", "--size", "256x256"], "too many"),
    (["--frames", "0"], "frames must be between 3"),
])
def test_toy_sets_beyond_the_machine_are_refused_before_any_clip_is_drawn(more, words, tmp_path,
                                                                          no_work, capsys):
    assert words in refused(capsys, ["benchmark", "toy", "--out", tmp_path / "set", *more])
    assert not (tmp_path / "set").exists()


def test_interpolate_refuses_a_size_beyond_the_machine_with_the_apps_limit(keys, tmp_path,
                                                                          tiny_model_dir,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr(inbetweening.keyframes, "inbetween_sequence", work_started)
    line = refused(capsys, interpolate(keys, tmp_path / "out.mp4", tiny_model_dir, "--device",
                                       "cpu", "--size", "6400x6400"))
    # the tiny model's usual work is 64x64 x 6 frames; the CPU takes 4x that
    assert "6400x6400 x 6 frames is too large for the CPU" in line and f"{4 * 64 * 64 * 6:,}" in \
        line, line
    assert not (tmp_path / "out.mp4").exists()


# -- item 7: a keyframe that is not a regular file ----------------------------------------------

@pytest.fixture
def alarm():
    """A call that blocks (reading a FIFO waits for a writer) ends in TimeoutError."""
    def ring(signum, frame):
        raise TimeoutError("blocked for 30 s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_at_once_never_opened(keys, tmp_path, tiny_model_dir, alarm, capsys):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    line = refused(capsys, interpolate([fifo, keys[1]], tmp_path / "out.mp4", tiny_model_dir))
    assert "not a regular file" in line, line
    os.mkfifo(tmp_path / "fifo.mp4")
    with pytest.raises(media.InbetweeningError, match="not a regular file"):
        media.read_video(tmp_path / "fifo.mp4")
    clip = tmp_path / "data" / "clip"  # a frame folder for train, one of its frames a FIFO
    media.write_video(make_clips(0, 1).video[0].permute(0, 2, 3, 1).numpy(), clip)
    (clip / "frame_0003.png").unlink()
    os.mkfifo(clip / "frame_0003.png")
    from inbetweening.data import scan

    assert "not an image" in scan(clip.parent, 3).unreadable[0][1]


# -- item 9: oversized PNG text, empty values, nothing left in home or the temporary folder -------

def test_a_png_with_an_uncompressed_20mb_text_chunk_is_refused(keys, tmp_path, tiny_model_dir,
                                                               capsys):
    text = PIL.PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * (20 << 20))  # tEXt: not compressed
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "text.png", pnginfo=text)
    line = refused(capsys, interpolate([tmp_path / "text.png", keys[1]], tmp_path / "out.mp4",
                                       tiny_model_dir))
    assert "cannot read image" in line and "text chunk" in line, line
    small = PIL.PngImagePlugin.PngInfo()
    small.add_text("comment", "a caption")
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "caption.png", pnginfo=small)
    assert media.read_image(tmp_path / "caption.png").size == (64, 64)


@pytest.mark.parametrize("flag", ["--size", "--guidance"])
def test_an_empty_value_is_refused_not_taken_as_the_default(flag, keys, tmp_path,
                                                            tiny_model_dir, capsys):
    line = refused(capsys, interpolate(keys, tmp_path / "out.mp4", tiny_model_dir, flag, ""))
    assert flag.lstrip("-") in line and "''" in line, line
    assert not (tmp_path / "out.mp4").exists()


def test_refused_runs_leave_nothing_in_the_home_folder(tmp_path):
    """A video file that is no video (imageio would try its other plugins and make ~/.imageio),
    and a set whose second pair has a damaged keyframe (found after the first pair was scored,
    torchmetrics having made ~/.cache/matplotlib): refused, and the home folder stays empty."""
    (tmp_path / "clip.png").write_bytes(b"not an image")
    from inbetweening.evaluation import load_set, make_toy_set

    make_toy_set(tmp_path / "set", 2)
    load_set(tmp_path / "set").pairs[1].start.write_bytes(b"junk")
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys\nfrom inbetweening import cli\n"
            f"print(cli.main(['train', '--data', {str(tmp_path / 'clip.png')!r}, '-o', "
            f"{str(tmp_path / 'run')!r}]))\n"
            f"print(cli.main(['evaluate', {str(tmp_path / 'set')!r}, '--methods', 'crossfade', "
            f"'--out', {str(tmp_path / 'results')!r}]))\n")
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    for name in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "IMAGEIO_USERDIR"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["2", "2"], run.stdout + run.stderr[-2000:]
    assert sorted(p.name for p in home.rglob("*")) == []
    assert not (tmp_path / "results").exists() and not (tmp_path / "run").exists()


# -- item 10: evaluation without the eval extra ----------------------------------------------------

@pytest.mark.parametrize("module", ["torchmetrics", "cv2", "matplotlib"])
def test_evaluate_without_the_eval_extra_says_which_extra_at_once(module, toy_set, tmp_path,
                                                                  no_work, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    line = refused(capsys, ["evaluate", toy_set, "--methods", "crossfade", "--out",
                            tmp_path / "results"])
    assert module in line and "pip install 'inbetweening[eval]'" in line, line
    assert not (tmp_path / "results").exists()


def test_a_toy_set_needs_no_eval_extra(tmp_path, monkeypatch):
    for module in ("torchmetrics", "cv2", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    assert cli.main(["benchmark", "toy", "--n", "1", "--out", str(tmp_path / "set")]) == 0


def test_the_torch_free_world_names_are_the_worlds():
    assert WORLD_NAMES == tuple(WORLDS)
