"""`inbetween render`: a manifest of shots on the tiny random model (1 step, 6 frames, 64x64): the
files of 2 processes are those of 1, bit for bit; a run killed mid-manifest and run again makes
the same files; a bad manifest is refused before any work, each bad row named; a shot that fails
is reported and the others are rendered."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from inbetweening import cli
from inbetweening.options import SamplingOptions
from inbetweening.render import COLUMNS, read_manifest
from inbetweening.utils import OUTPUT_MARK

pytestmark = pytest.mark.filterwarnings("ignore:.*torch_dtype. is deprecated:FutureWarning")

# Four shots, one per output kind the writers make byte for byte alike; the third is the longest
# (three segments of 3 steps), so that a process can be killed in the middle of it.
SHOTS = """keyframes,output,seed,method,loop,steps
k0.png;k1.png,a.gif,1,,,
k1.png;k2.png,frames,2,trf,,
k0.png; k1.png; k2.png,sub/c.zip,3,gi-noft,true,3
k2.png;k0.png,d.webp,,,,
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A folder with four keyframes and the manifest of the four shots."""
    root = tmp_path_factory.mktemp("scene")
    g = np.random.default_rng(3)
    for i in range(3):
        PIL.Image.fromarray(g.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / f"k{i}.png")
    (root / "shots.csv").write_text(SHOTS)
    return root


@pytest.fixture(scope="module")
def model_args(tiny_model_dir):
    return ["--model", str(tiny_model_dir / "model"), "--backward",
            str(tiny_model_dir / "backward.safetensors"), "--device", "cpu", "--steps", "1",
            "--reinject", "1"]


def render(*argv) -> int:
    return cli.main(["render", *map(str, argv)])


def one_thread(fn):
    """``fn()`` at one thread, as OMP_NUM_THREADS=1 runs each launched process (the sums then
    run in the same order, and the frames are equal to the last bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def files(out: Path) -> dict[str, bytes]:
    """Every output file under ``out`` (the render's own records and summary left out)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".render" not in p.relative_to(out).parts
            and p.name != "render.json"}


@pytest.fixture(scope="module")
def reference(scene, model_args, tmp_path_factory):
    """One uninterrupted run in this process: the files every other run must make."""
    out = tmp_path_factory.mktemp("runs") / "one"
    assert one_thread(lambda: render(scene / "shots.csv", "-o", out, *model_args)) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, scene, out, model_args) -> subprocess.Popen:
    """``inbetween render`` on 2 CPU processes under ``torchrun`` or ``accelerate launch``."""
    bin_dir, port = Path(sys.executable).parent, str(free_port())
    start = {"torchrun": [str(bin_dir / "torchrun"), "--nproc-per-node", "2", "--master-port",
                          port],
             "accelerate": [str(bin_dir / "accelerate"), "launch", "--multi_gpu",
                            "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                            "no", "--dynamo_backend", "no", "--main_process_port", port]}
    cmd = [*start[launcher], "-m", "inbetweening.cli", "render", str(scene / "shots.csv"), "-o",
           str(out), *model_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_the_reference_run_renders_every_shot_and_sums_them_up(reference, scene):
    assert sorted(files(reference)) == ["a.gif", "d.webp", f"frames/{OUTPUT_MARK}"] + [
        f"frames/frame_{i:04d}.png" for i in range(6)] + ["sub/c.zip"]
    summary = json.loads((reference / "render.json").read_text())
    assert summary["counts"] == {"done": 4}
    shots = {e["output"]: e for e in summary["outputs"]}
    assert [e["line"] for e in summary["outputs"]] == [2, 3, 4, 5]
    c = shots["sub/c.zip"]
    assert c["status"] == "done" and c["seed"] == 3 and c["frames"] == 3 * 5  # a loop of 3
    assert c["settings"]["sampling"]["method"] == "gi-noft" and c["settings"]["loop"]
    assert c["settings"]["sampling"]["steps"] == 3 and c["predictions"] == 3 * 4  # 3 + 1 reinjected
    assert shots["d.webp"]["seed"] == 0 and shots["d.webp"]["settings"]["sampling"]["steps"] == 1
    assert all(e["seconds"] > 0 for e in shots.values())


@pytest.mark.slow
def test_two_processes_render_the_same_files_as_one(reference, scene, model_args, tmp_path):
    out = tmp_path / "two"
    proc = launch("accelerate", scene, out, model_args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "[0] line" in stdout and "[1] line" in stdout  # both processes rendered shots
    assert files(out) == files(reference)
    assert json.loads((out / "render.json").read_text())["counts"] == {"done": 4}


def wait_for(condition, proc, seconds=300):
    end = time.time() + seconds
    while time.time() < end and proc.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not seen in {seconds} s (exit {proc.poll()})")


def record(out: Path, name: str) -> dict | None:
    from inbetweening.render.records import load_record

    return load_record(out, name)


@pytest.mark.slow
def test_a_run_killed_mid_manifest_goes_on_to_the_same_files(reference, scene, model_args,
                                                            tmp_path, capsys):
    """Two processes under torchrun; the first is killed while it renders its second shot (the
    long one): the launcher stops the other. The run again renders only what is missing, and
    the files are those of the uninterrupted run."""
    out = tmp_path / "killed"
    proc = launch("torchrun", scene, out, model_args)
    try:
        def rendering_c():
            done = (record(out, "a.gif") or {}).get("status") == "done"
            c = record(out, "sub/c.zip") or {}
            return c.get("pid") if done and c.get("status") == "rendering" else None
        os.kill(wait_for(rendering_c, proc), signal.SIGKILL)
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "sub/c.zip" not in files(out) and "a.gif" in files(out)
    kept = {name: (out / name).stat().st_mtime_ns for name in files(out)}
    capsys.readouterr()
    assert one_thread(lambda: render(scene / "shots.csv", "-o", out, *model_args)) == 0
    said = capsys.readouterr().out
    assert f"resuming: {len({n.split('/')[0] for n in kept})} of 4 shots" in said
    assert files(out) == files(reference)
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())  # not redone
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert json.loads((out / "render.json").read_text())["counts"] == {"done": 4}


# -- checked before any work ----------------------------------------------------------------------

def test_a_bad_manifest_is_refused_before_any_work_naming_each_bad_row(scene, model_args,
                                                                       tmp_path, capsys):
    PIL.Image.new("RGB", (128, 64)).save(scene / "wide.png")
    rows = [
        {"keyframes": ["k0.png", "k1.png"], "output": "ok.gif", "steps": 2},           # line 1
        {"keyframes": "k0.png;k1.png", "output": "x.gif", "stepz": 2},                 # unknown
        {"keyframes": ["k0.png", "nowhere.png"], "output": "y.gif"},                   # missing
        {"keyframes": ["k0.png", "k1.png"], "output": "z.gif", "steps": 0,             # values
         "method": "magic", "seed": -1, "size": "65x64"},
        {"keyframes": ["k0.png", "k1.png"], "output": "OK.gif"},                       # twice
        {"keyframes": ["k0.png"], "output": "../up.gif"},                              # two more
        {"keyframes": ["k0.png", "wide.png"], "output": "w.txt", "loop": "maybe"},     # three
    ]
    bad = scene / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{not json\n")
    out = tmp_path / "out"
    assert render(bad, "-o", out, *model_args) == 2
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("error: bad.jsonl line ") for line in err), err
    by_line = {int(line.split()[3].rstrip(":")): line for line in err}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 9]
    assert "column stepz: unknown column" in by_line[2]
    assert "column keyframes:" in by_line[3] and "nowhere.png: no such file" in by_line[3]
    for column in ("steps", "method", "seed", "size"):
        assert f"column {column}: " in by_line[4]
    assert "column output: OK.gif is also the output of line 1" in by_line[5]
    assert "at least two keyframes" in by_line[6] and "not a name under" in by_line[6]
    for words in ("aspect ratios", "column output: cannot write w.txt", "column loop:"):
        assert words in by_line[7]
    assert "not JSON" in by_line[9]
    assert not out.exists()  # nothing made, nothing rendered


def test_an_unknown_csv_column_and_what_the_model_cannot_take(scene, model_args, tmp_path,
                                                             capsys):
    out = tmp_path / "out"
    csv = scene / "unknown.csv"
    csv.write_text("keyframes,output,colour\nk0.png;k1.png,a.gif,red\n")
    assert render(csv, "-o", out, *model_args) == 2
    assert capsys.readouterr().err == ("error: unknown.csv line 1: unknown columns colour (known: "
                                       + ", ".join(COLUMNS) + ")\n")
    # Checked against the loaded model (6 frames: 3 to 12 a segment), still before any shot.
    csv.write_text("keyframes,output,frames\nk0.png;k1.png,a.gif,\nk1.png;k2.png,b.gif,13\n")
    assert render(csv, "-o", out, *model_args) == 2
    assert capsys.readouterr().err == ("error: unknown.csv line 3: this model takes 3 to 12 "
                                       "frames (trained on 6); got 13. Use several keyframes "
                                       "for longer videos\n")
    assert not out.exists()


def test_manifest_cells_are_read_as_the_command_line_reads_them(scene):
    jsonl = scene / "typed.jsonl"
    jsonl.write_text(json.dumps({"keyframes": ["k0.png", "k1.png"], "output": "a", "steps": 3,
                                 "reinject-fraction": "0.25", "guidance": "1,2", "loop": True,
                                 "size": "128x64", "fps": None, "side_by_side": "yes"}) + "\n")
    defaults = SamplingOptions(method="trf", fps=9, steps=7)
    [shot] = read_manifest(jsonl, defaults, seed=11)
    assert shot.options == SamplingOptions(method="trf", fps=9, steps=3, reinject_fraction=0.25,
                                           guidance=(1.0, 2.0), size=(128, 64))
    assert shot.loop and shot.side_by_side and shot.seed == 11 and shot.line == 1
    assert shot.paths == (scene / "k0.png", scene / "k1.png")


# -- a shot that fails, outputs already there -----------------------------------------------------

def test_a_failing_shot_is_reported_and_the_others_rendered(scene, model_args, reference,
                                                           tmp_path, capsys):
    """A keyframe whose header reads but whose pixels do not passes the check of the manifest
    and fails when its shot is rendered: the summary says so, the other shots are made, exit 2
    with the shot named. Mended, a rerun renders only it."""
    for i in range(3):
        (tmp_path / f"k{i}.png").write_bytes((scene / f"k{i}.png").read_bytes())
    broken = tmp_path / "broken.png"
    whole = (scene / "k1.png").read_bytes()
    broken.write_bytes(whole[:len(whole) // 2])
    manifest = tmp_path / "shots.csv"
    manifest.write_text(SHOTS.replace("k1.png;k2.png,frames", "broken.png;k2.png,frames"))
    out = tmp_path / "out"
    assert one_thread(lambda: render(manifest, "-o", out, *model_args)) == 2
    captured = capsys.readouterr()
    assert "line 3 frames: failed: " in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors[0] == ("error: 1 of 4 shots failed (the others are done; a rerun tries these "
                         "again):")
    assert errors[1].startswith(f"error: line 3 frames: {broken}: cannot read") and len(errors) == 2
    summary = json.loads((out / "render.json").read_text())
    assert summary["counts"] == {"done": 3, "failed": 1}
    failed = summary["outputs"][1]
    assert failed["status"] == "failed" and "cannot read image" in failed["error"]
    assert not (out / "frames").exists()
    made = files(out)
    assert made == {k: v for k, v in files(reference).items() if not k.startswith("frames/")}

    broken.write_bytes(whole)
    assert one_thread(lambda: render(manifest, "-o", out, *model_args)) == 0
    assert "resuming: 3 of 4 shots" in capsys.readouterr().out
    assert files(out) == files(reference)


def test_outputs_made_otherwise_are_kept_unless_overwrite(scene, model_args, tmp_path, capsys):
    """A row changed since its output was rendered, or a file the render did not make, is
    refused before any work (a rerun must not mix settings); --overwrite renders them again."""
    out = tmp_path / "out"
    manifest = scene / "one.csv"
    manifest.write_text("keyframes,output,seed\nk0.png;k1.png,a.gif,1\n")
    assert render(manifest, "-o", out, *model_args) == 0
    manifest.write_text("keyframes,output,seed\nk0.png;k1.png,a.gif,1\nk2.png;k0.png,d.webp,\n")
    (out / "d.webp").write_text("mine")
    capsys.readouterr()
    assert render(manifest, "-o", out, *model_args) == 2
    assert capsys.readouterr().err == (f"error: one.csv line 3: column output: {out / 'd.webp'} "
                                       "was not made by inbetween render; pass --overwrite to "
                                       "render it again\n")
    assert (out / "d.webp").read_text() == "mine"
    (out / "d.webp").unlink()
    assert render(manifest, "-o", out, *model_args) == 0
    assert "resuming: 1 of 2 shots" in capsys.readouterr().out
    seed_1 = (out / "a.gif").read_bytes()
    manifest.write_text("keyframes,output,seed\nk0.png;k1.png,a.gif,2\nk2.png;k0.png,d.webp,\n")
    assert render(manifest, "-o", out, *model_args) == 2
    assert "a.gif was rendered with other settings (seed); pass --overwrite" in \
        capsys.readouterr().err
    assert (out / "a.gif").read_bytes() == seed_1
    assert render(manifest, "-o", out, *model_args, "--overwrite") == 0
    assert "resuming: 1 of 2 shots" in capsys.readouterr().out  # d.webp kept
    assert (out / "a.gif").read_bytes() != seed_1
    assert json.loads((out / "render.json").read_text())["outputs"][0]["seed"] == 2
    assert render(manifest, "-o", scene, *model_args) == 2  # a folder that holds no render
    assert "does not hold a render" in capsys.readouterr().err


def test_the_memory_setting_reaches_the_pipeline(scene, model_args, tmp_path,
                                                 memory_settings_applied):
    """``--memory`` (the model options every command shares) puts render's pipeline in it."""
    applied = memory_settings_applied
    assert cli.main(["render", str(scene / "shots.csv"), "-o", str(tmp_path / "out"),
                     *model_args, "--memory", "low"]) == 0
    assert applied == ["low"]
