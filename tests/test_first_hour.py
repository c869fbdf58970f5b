"""A real user's first hour (issue 21): the same frames from Python, the command line and the app;
SVD's call arguments; backward weights from the model hub; mistakes answered before torch is
imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from inbetweening import cli, media
from inbetweening.locate import BUNDLED_MODEL, bundled_model

needs_toy = pytest.mark.skipif(bundled_model() is None, reason="no bundled toy model")


@needs_toy
def test_python_the_command_line_and_the_app_make_the_same_frames(toy_keyframe_files, tmp_path):
    """The bundled toy model with nothing set but the seed: pipe(...), `inbetween interpolate`
    and the app resolve the same settings (the model's recommended 25 steps and 3 re-injections)
    and make the same frames."""
    from inbetweening.app import InbetweenApp
    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline.from_pretrained("toy")  # a bundled model by its name, as the CLI
    pipe.set_progress_bar_config(disable=True)
    images = [PIL.Image.open(p).convert("RGB") for p in toy_keyframe_files]
    python = pipe(*images, generator=torch.Generator().manual_seed(3), output_type="np")
    assert pipe.num_predictions == 61  # the model's recommendation, not the pipeline's 175
    python = np.stack(media.as_uint8(python.frames[0]))

    assert cli.main(["interpolate", *map(str, toy_keyframe_files), "-o", str(tmp_path / "cli"),
                     "--seed", "3", "--device", "cpu"]) == 0
    command_line, _ = media.read_video(tmp_path / "cli")

    app = InbetweenApp(pipe, tmp_path / "app")
    d = app.defaults()
    _, files, message = app.generate([str(p) for p in toy_keyframe_files], d["method"], d["frames"],
                                     d["steps"], 3, d["size"], d["fps"],
                                     motion_bucket=d["motion_bucket"], noise_aug=d["noise_aug"])
    assert message.startswith("**Done:**"), message
    with zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))) as z:
        in_app = np.stack([np.asarray(PIL.Image.open(z.open(n)).convert("RGB"))
                           for n in sorted(z.namelist())])
    np.testing.assert_array_equal(command_line, python)
    np.testing.assert_array_equal(in_app, python)


def test_svds_call_arguments(tiny_pipe, keyframes):
    """``image=`` (SVD's name for the first keyframe), sizes in multiples of 8 (SVD's, not 64),
    motion bucket and noise augmentation reach the model, the progress bar counts steps."""
    run = dict(num_frames=4, num_inference_steps=2, output_type="latent")
    start, end = keyframes
    a = tiny_pipe(image=start, end_image=end, generator=torch.Generator().manual_seed(0), **run)
    b = tiny_pipe(start, end, generator=torch.Generator().manual_seed(0), **run)
    assert torch.equal(a.frames, b.frames)
    odd = tiny_pipe(start, end, width=72, height=56, generator=torch.Generator().manual_seed(0),
                    **run)
    assert odd.frames.shape == (1, 4, 4, 7, 9)
    for change in (dict(motion_bucket_id=20), dict(noise_aug_strength=0.3)):
        other = tiny_pipe(start, end, generator=torch.Generator().manual_seed(0), **run, **change)
        assert (other.frames - b.frames).abs().max() > 1e-4, change
    bars = []
    tiny_pipe.set_progress_bar_config(disable=False, file=open("/dev/null", "w"))
    progress = tiny_pipe.progress_bar

    def spy(**kw):
        bars.append(progress(**kw))
        return bars[-1]

    tiny_pipe.progress_bar = spy
    tiny_pipe(start, end, reinject_count=3, generator=torch.Generator().manual_seed(0), **run)
    assert bars[0].total == 2 and bars[0].n == 2 and "steps" in bars[0].desc  # not predictions


def test_the_command_line_takes_svds_conditioning(tiny_model_dir, tmp_path):
    frames = {}
    for name, extra in (("plain", []), ("bucket", ["--motion-bucket-id", "20"]),
                        ("aug", ["--noise-aug-strength", "0.3"])):
        keys = [tmp_path / f"{i}.png" for i in range(2)]
        for i, k in enumerate(keys):
            PIL.Image.fromarray(np.full((64, 64, 3), 60 + 100 * i, np.uint8)).save(k)
        out = tmp_path / name
        assert cli.main(["interpolate", *map(str, keys), "-o", str(out), "--model",
                         str(tiny_model_dir / "model"), "--steps", "1", "--seed", "0",
                         "--device", "cpu", *extra]) == 0
        frames[name] = media.read_video(out)[0].astype(int)
    assert np.abs(frames["bucket"] - frames["plain"]).max() > 0
    assert np.abs(frames["aug"] - frames["plain"]).max() > 0
    two = tmp_path / "two.gif"
    assert cli.main(["interpolate", *map(str, keys), "-o", str(two), "--model",
                     str(tiny_model_dir / "model"), "--steps", "1", "--seed", "0", "--device",
                     "cpu", "--num-videos", "2"]) == 0
    first, second = (media.read_video(tmp_path / f"two-{i}.gif")[0] for i in (1, 2))
    assert np.abs(first.astype(int) - second.astype(int)).max() > 0  # two draws, one seed


# -- backward weights from the model hub, offline -----------------------------------------------
def hub_cache(root, repo: str, files: dict) -> None:
    """A model-hub cache folder laid out as huggingface_hub lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for name, source in files.items():
        target = base / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


@needs_toy
def test_backward_weights_by_model_hub_name_from_the_cache(tmp_path):
    hub_cache(tmp_path / "hub", "someone/gi-backward", {
        "backward.safetensors": BUNDLED_MODEL / "backward.safetensors",
        "xt/backward-fp16.safetensors": BUNDLED_MODEL / "backward.safetensors"})
    code = ("import json, sys, torch\n"
            "from inbetweening.pipeline import InbetweenPipeline\n"
            "from inbetweening import backward\n"
            "out = {}\n"
            "for spec in sys.argv[1:]:\n"
            "    pipe = InbetweenPipeline.from_pretrained('toy', backward=spec)\n"
            "    t = backward.backward_parameters(pipe.unet)\n"
            "    out[spec] = float(sum(v.double().sum() for v in t.values()))\n"
            "print(json.dumps(out))\n")
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1"}
    specs = ["someone/gi-backward", "someone/gi-backward/xt/backward-fp16.safetensors",
             str(BUNDLED_MODEL / "backward.safetensors")]
    run = subprocess.run([sys.executable, "-c", code, *specs], env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    sums = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(set(sums.values())) == 1  # the same weights, three ways
    keys = [tmp_path / "a.png", tmp_path / "b.png"]
    for k in keys:
        PIL.Image.new("RGB", (64, 64)).save(k)
    missing = subprocess.run(
        [sys.executable, "-m", "inbetweening.cli", "interpolate", *map(str, keys),
         "--backward", "someone/elsewhere", "-o", str(tmp_path / "o.mp4")], env=env,
        capture_output=True, text=True)
    err = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(err) == 1 and "model hub" in err[0], err


# -- mistakes are answered before torch is imported -----------------------------------------------
NO_MODEL_NEEDED = {
    "a missing keyframe": ["interpolate", "{d}/nope.png", "{d}/b.png", "-o", "{d}/o.mp4"],
    "a bad size": ["interpolate", "{d}/a.png", "{d}/b.png", "-o", "{d}/o.mp4", "--size", "100x64"],
    "an existing output": ["interpolate", "{d}/a.png", "{d}/b.png", "-o", "{d}/a.png"],
    "keyframes of two shapes": ["interpolate", "{d}/a.png", "{d}/wide.png", "-o", "{d}/o.mp4"],
    "one keyframe": ["interpolate", "{d}/a.png", "-o", "{d}/o.mp4"],
    "a bad seed": ["interpolate", "{d}/a.png", "{d}/b.png", "-o", "{d}/o.mp4", "--seed", "-1"],
    "absent backward weights": ["interpolate", "{d}/a.png", "{d}/b.png", "-o", "{d}/o.mp4",
                                "--backward", "{d}/nope.safetensors"],
    "a model folder that is not there": ["interpolate", "{d}/a.png", "{d}/b.png", "-o",
                                         "{d}/o.mp4", "--model", "{d}/no-model"],
    "a bad number of videos": ["interpolate", "{d}/a.png", "{d}/b.png", "-o", "{d}/o.mp4",
                               "--num-videos", "0"],
    "a missing manifest": ["render", "{d}/shots.csv", "-o", "{d}/shots"],
    "a demo over a folder": ["demo", "-o", "{d}"],
}


@pytest.mark.parametrize("case", list(NO_MODEL_NEEDED))
def test_mistakes_that_need_no_model_are_refused_before_torch_is_imported(case, tmp_path):
    for name, size in (("a", 64), ("b", 64), ("wide", 128)):
        PIL.Image.new("RGB", (size, 64)).save(tmp_path / f"{name}.png")
    argv = [a.format(d=tmp_path) for a in NO_MODEL_NEEDED[case]]
    code = ("import sys\nfrom inbetweening import cli\nrc = cli.main(sys.argv[1:])\n"
            "print(rc, [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == "2 []", (run.stdout, run.stderr)
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_a_model_the_hub_cannot_give_is_one_clear_line(tmp_path):
    from inbetweening.loading import load_failure

    error = OSError("Cannot load model someone/svd-xt: the model is not fully cached locally "
                    "(...) and an error occurred while trying to fetch metadata from the Hub. "
                    "Please check out the root cause in the stacktrace above.")
    line = load_failure("someone/svd-xt", error)
    assert "stacktrace" not in line and line.count("someone/svd-xt") == 1
    assert "offline" in line and "\n" not in line
