"""Nothing the user made is lost: an output path may replace only what this tool wrote.

Every ``-o`` form that once emptied a folder (``.``, ``""``, the folder holding the keyframes, a
folder of the user's files, the home and the root folder) is refused with one ``error:`` line,
exit status 2, and the folder is left as it was; a frames folder this tool wrote is replaced."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest

from inbetweening import cli, media
from inbetweening.utils import InbetweeningError, atomic_path, check_target, folder_mark


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"")
                  for p in folder.rglob("*"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A populated folder that is the current folder, with two keyframes and a file of the
    user's; HOME points to it too."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("a", "b"):
        PIL.Image.fromarray(np.full((64, 64, 3), 80 if name == "a" else 160, np.uint8)).save(
            work / f"{name}.png")
    (work / "notes.txt").write_text("mine")
    (work / "sub").mkdir()
    (work / "sub" / "frame_0000.png").write_bytes(b"x")  # a frames folder ...
    (work / "sub" / "thesis.tex").write_text("also mine")  # ... holding a file of the user's
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    return work


@pytest.mark.parametrize("target", [".", "", "./", "..", "sub", "{home}", "{root}", "{inputs}"])
def test_a_populated_folder_survives_every_output_form(target, home, capsys):
    before = snapshot(home.parent)
    target = target.format(home=home, root=os.path.abspath(os.sep), inputs=home)
    code = cli.main(["interpolate", "a.png", "b.png", "-o", target, "--overwrite", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert snapshot(home.parent) == before


def test_the_keyframes_folder_is_refused_even_when_elsewhere(tmp_path, home):
    frames = tmp_path / "keys"
    frames.mkdir()
    (frames / "frame_0000.png").write_bytes((home / "a.png").read_bytes())  # looks like ours
    with pytest.raises(InbetweeningError, match="holds the input"):
        check_target(frames, True, folder=True, inputs=[frames / "frame_0000.png"])
    with pytest.raises(InbetweeningError, match="one of the inputs"):
        check_target(home / "a.png", True, folder=False, inputs=["a.png"])


def test_a_frames_folder_this_tool_wrote_is_replaced_and_others_are_not(tmp_path):
    video = np.zeros((3, 8, 8, 3), np.float32)
    out = media.write_video(video, tmp_path / "frames")
    assert sorted(p.name for p in out.glob("frame_*")) == [
        "frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert folder_mark(out)["kind"] == "output"  # a hidden mark: a frame glob does not see it
    media.write_video(video[:2], out, overwrite=True)  # ours: replaced
    assert len(list(out.glob("frame_*.png"))) == 2
    (out / "keep.txt").write_text("the user's")  # no longer only ours
    with pytest.raises(InbetweeningError, match="did not write"):
        media.write_video(video, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "the user's"


@pytest.mark.parametrize("form, message", [
    ("file/x.mp4", "is a file, not a folder"),
    ("file", "is a file; it is not replaced by a folder"),
    ("dir.mp4", "is a folder; it is not replaced by a file"),
])
def test_output_paths_that_cannot_be_written_are_refused_before_any_work(form, message, tmp_path):
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "dir.mp4" / "inside").write_text("keep")
    with pytest.raises(InbetweeningError, match=message):
        media.check_output(tmp_path / form, True)
    assert (tmp_path / "file").read_text() == "keep"
    assert (tmp_path / "dir.mp4" / "inside").read_text() == "keep"


def test_atomic_folders_of_other_commands_refuse_the_current_folder(home):
    with pytest.raises(InbetweeningError, match="will not replace the folder"):
        with atomic_path(".", overwrite=True) as tmp:
            tmp.mkdir()
    assert (home / "notes.txt").read_text() == "mine"


# -- what a run reads, and folders the tool wrote as something else, are never replaced ----------
@pytest.fixture
def model_copy(tmp_path):
    """A copy of the bundled toy model (a model folder the user keeps; it carries the tool's mark
    of a model folder)."""
    import shutil

    from inbetweening.locate import BUNDLED_MODEL

    return shutil.copytree(BUNDLED_MODEL, tmp_path / "M")


def refused(argv, capsys) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def test_the_model_folder_a_run_reads_is_never_its_output(home, model_copy, capsys):
    before = snapshot(model_copy)
    err = refused(["interpolate", "a.png", "b.png", "--model", str(model_copy), "-o",
                   str(model_copy), "--overwrite", "--steps", "1"], capsys)
    assert "one of the inputs" in err
    err = refused(["interpolate", "a.png", "b.png", "--model", str(model_copy), "-o",
                   str(model_copy / "unet"), "--overwrite", "--steps", "1"], capsys)
    assert "inside the input folder" in err
    # nor a model folder the run does not read: it holds a model, and it is not an output
    err = refused(["interpolate", "a.png", "b.png", "-o", str(model_copy), "--overwrite",
                   "--steps", "1"], capsys)
    assert "holds a model" in err
    assert snapshot(model_copy) == before


def test_a_trained_backward_folder_is_never_an_output(home, model_copy, capsys):
    run = home.parent / "runs" / "backward"  # what `inbetween train -o runs/backward` leaves
    (run / "checkpoints").mkdir(parents=True)
    (run / "backward.safetensors").write_bytes((model_copy / "backward.safetensors").read_bytes())
    (run / "log.csv").write_text("step,loss\n")
    before = snapshot(run)
    err = refused(["interpolate", "a.png", "b.png", "--backward", str(run / "backward.safetensors"),
                   "-o", str(run), "--overwrite", "--steps", "1"], capsys)
    assert "holds the input" in err
    err = refused(["interpolate", "a.png", "b.png", "-o", str(run), "--overwrite", "--steps", "1"],
                  capsys)
    assert "did not write" in err
    assert snapshot(run) == before


@pytest.mark.parametrize("mark", [None, {"entries": ["frame_0001.png", "frame_0002.png"]},
                                  {"kind": "set", "entries": ["frame_0001.png", "frame_0002.png"]}])
def test_a_frames_folder_is_replaced_only_with_the_mark_of_an_output(mark, home, capsys):
    """A folder of ffmpeg-named frames the user made (no mark), one marked before marks had a
    kind, and one marked as another kind of folder are all kept."""
    import json

    from inbetweening.utils import OUTPUT_MARK

    frames = home / "frames"
    frames.mkdir()
    for i in (1, 2):
        (frames / f"frame_{i:04d}.png").write_bytes((home / "a.png").read_bytes())
    if mark is not None:
        (frames / OUTPUT_MARK).write_text(json.dumps(mark))
    before = snapshot(frames)
    refused(["interpolate", "a.png", "b.png", "-o", "frames", "--overwrite", "--steps", "1"],
            capsys)
    assert snapshot(frames) == before


def test_evaluate_never_writes_into_what_it_reads_or_a_folder_of_the_users(tmp_path, capsys):
    from inbetweening.evaluation import make_toy_set

    bset = make_toy_set(tmp_path / "set", 1)
    capsys.readouterr()  # (its progress bar)
    before = snapshot(bset)
    err = refused(["evaluate", str(bset), "--out", str(bset), "--overwrite", "--methods",
                   "crossfade"], capsys)
    assert "one of the inputs" in err
    refused(["evaluate", str(bset), "--out", str(bset / "results"), "--overwrite", "--methods",
             "crossfade"], capsys)
    assert snapshot(bset) == before
    mine = tmp_path / "mine"
    (mine / "videos").mkdir(parents=True)
    (mine / "videos" / "holiday.mp4").write_bytes(b"the user's")
    err = refused(["evaluate", str(bset), "--out", str(mine), "--overwrite", "--methods",
                   "crossfade"], capsys)
    assert "does not hold evaluation results" in err
    assert (mine / "videos" / "holiday.mp4").read_bytes() == b"the user's"


def test_train_never_trains_into_a_model_folder_or_another_output(tmp_path, model_copy, capsys):
    clips = tmp_path / "clips"
    (clips / "clip").mkdir(parents=True)
    before = snapshot(model_copy)
    for target in (model_copy, tmp_path / "out"):
        if target != model_copy:
            media.write_video(np.zeros((3, 8, 8, 3), np.float32), target)
        err = refused(["train", "--data", str(clips), "-o", str(target), "--overwrite",
                       "--device", "cpu"], capsys)
        assert "will not train into" in err
    assert snapshot(model_copy) == before


def test_convert_never_writes_into_the_folder_it_converts(tmp_path, capsys):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    err = refused(["convert-official", str(unet), "-o",
                   str(unet / "diffusion_pytorch_model.safetensors"), "--overwrite"], capsys)
    assert "inside the input folder" in err
    assert (unet / "diffusion_pytorch_model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("folder", [False, True])
def test_a_target_that_appears_during_the_work_is_not_replaced(folder, tmp_path):
    target = tmp_path / ("frames" if folder else "video.mp4")
    with pytest.raises(InbetweeningError, match="already exists|appeared"):
        with atomic_path(target, overwrite=False) as tmp:
            if folder:
                tmp.mkdir()
                (tmp / "frame_0000.png").write_bytes(b"ours")
                target.mkdir()
                (target / "theirs.txt").write_text("made meanwhile")
            else:
                tmp.write_bytes(b"ours")
                target.write_text("made meanwhile")
    kept = target / "theirs.txt" if folder else target
    assert kept.read_text() == "made meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no partial left behind
