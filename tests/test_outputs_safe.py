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
from inbetweening.utils import InbetweeningError, atomic_path, check_target


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
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_0000.png", "frame_0001.png", "frame_0002.png"]
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
