"""`inbetween interpolate` / `convert-official` end to end: outputs, and every bad input of the
core issue gives a one-line error, exit status 2 and no output file."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from conftest import tiny_unet
from safetensors.torch import save_file

from inbetweening import cli, media


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = {}
    for name in ("a", "b"):
        arr = (torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()
        paths[name] = tmp_path / f"{name}.png"
        PIL.Image.fromarray(arr).save(paths[name])
    paths["text"] = tmp_path / "notes.png"
    paths["text"].write_text("not an image")
    paths["wide"] = tmp_path / "wide.png"
    PIL.Image.new("RGB", (128, 64)).save(paths["wide"])
    return paths


@pytest.fixture
def model_args(tiny_model_dir):
    return ["--model", tiny_model_dir / "model", "--backward",
            tiny_model_dir / "backward.safetensors", "--steps", "1", "--device", "cpu",
            "--reinject", "1"]


def test_interpolate_writes_a_video_and_a_seed_repeats_it(files, model_args, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        assert run("interpolate", files["a"], files["b"], "-o", out, "--seed", 3, *model_args) == 0
    a, _ = media.read_video(one)
    b, _ = media.read_video(two)
    assert a.shape == (6, 64, 64, 3) and (a == b).all()
    assert run("interpolate", files["a"], files["b"], "-o", tmp_path / "v.mp4", *model_args) == 0
    assert "seed " in capsys.readouterr().out  # no --seed: the one used is printed


def test_compile_sampler_and_peer_method_options(files, model_args, tmp_path, monkeypatch):
    """--compile runs the UNet through torch.compile (here its eager backend: no C compiler
    work in a test) and makes the same video; --sampler, --reinject-at and the peer methods reach
    the pipeline (each gives another video)."""
    from inbetweening import attention

    compiled = []
    real = torch.compile

    def spy(model, **kw):
        compiled.append(model)
        return real(model, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", spy)
    videos = {}
    for name, extra in [("plain", []), ("compiled", ["--compile"]),
                        ("heun", ["--sampler", "heun"]), ("middle", ["--reinject-at", "middle"]),
                        ("vibid", ["--method", "vibid"])]:
        out = tmp_path / name  # PNG frames: no lossy encoding between the videos compared
        assert run("interpolate", files["a"], files["b"], "-o", out, "--seed", 3, *model_args,
                   "--steps", 3, *extra) == 0
        videos[name] = media.read_video(out)[0].astype(int)
    assert len(compiled) == 1 and attention.unwrap(compiled[0]) is compiled[0]
    assert abs(videos["plain"] - videos["compiled"]).max() <= 1
    for name in ("heun", "middle", "vibid"):
        assert abs(videos["plain"] - videos[name]).max() > 1, name


def test_memory_setting_reaches_the_pipeline(files, model_args, tmp_path,
                                             memory_settings_applied):
    """--memory lowest puts the loaded pipeline in that setting; its video is the default's
    decoded in the same chunks (the tiny model's temporal decoder mixes the frames of a chunk)."""
    applied = memory_settings_applied
    videos = {}
    for name, extra in [("low", ["--memory", "lowest"]), ("default", ["--decode-chunk", "2"])]:
        out = tmp_path / name
        assert run("interpolate", files["a"], files["b"], "-o", out, "--seed", 3, *model_args,
                   *extra) == 0
        videos[name] = media.read_video(out)[0].astype(int)
    assert applied == ["lowest"]
    assert abs(videos["low"] - videos["default"]).max() <= 1


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("text", "not an image file"),
    ("aspect", "different aspect ratios"),
    ("size", "multiple of 8"),
    ("frames", "frames"),
    ("exists", "already exists"),
    ("suffix", "must end in"),
    ("dtype", "invalid choice"),
    ("memory", "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(case, message, files, model_args, tmp_path,
                                                    capsys):
    out = tmp_path / "out.mp4"
    argv = ["interpolate", files["a"], files["b"], "-o", out, *model_args]
    if case == "missing":
        argv[2] = tmp_path / "nope.png"
    elif case == "text":
        argv[2] = files["text"]
    elif case == "aspect":
        argv[2] = files["wide"]
    elif case == "size":
        argv += ["--size", "100x64"]
    elif case == "frames":
        argv += ["--frames", "40"]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "suffix":
        argv[4] = tmp_path / "out.avi"
    elif case == "dtype":
        argv += ["--dtype", "fp8"]
    elif case == "memory":
        argv += ["--memory", "huge"]
    assert run(*argv) == 2  # argparse's own errors too: one line, exit 2, nothing written
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_backward_weights_of_another_architecture_are_refused(files, tiny_model_dir, tmp_path,
                                                               capsys):
    from inbetweening import backward

    other = tiny_unet(channels=(64, 128), cross_dim=32)
    bad = tmp_path / "other.safetensors"
    backward.save_backward_weights(bad, backward.backward_parameters(other))
    out = tmp_path / "out.gif"
    code = run("interpolate", files["a"], files["b"], "-o", out, "--model",
               tiny_model_dir / "model", "--backward", bad, "--steps", "1", "--device", "cpu")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "do not fit this UNet" in err and "wrong shape" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    raw = tmp_path / "raw.safetensors"
    save_file({"x": torch.zeros(2)}, raw)
    assert run("interpolate", files["a"], files["b"], "-o", out, "--model",
               tiny_model_dir / "model", "--backward", raw, "--device", "cpu") == 2
    assert "not a backward-weights file" in capsys.readouterr().err
    assert not out.exists()


def test_model_folder_errors(files, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert run("interpolate", files["a"], files["b"], "-o", out, "--model",
               tmp_path / "no-model") == 2
    assert "model folder not found" in capsys.readouterr().err
    assert run("interpolate", files["a"], files["b"], "-o", out, "--model", tmp_path) == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
    assert not out.exists()


def test_convert_official_through_the_cli(tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir / "model" / "unet"
    out = tmp_path / "converted.safetensors"
    assert run("convert-official", folder, "-o", out) == 0
    tensors, meta = media_free_load(out)
    assert meta["source"].startswith("official") and len(tensors) == 12
    assert run("convert-official", folder, "-o", out) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert run("convert-official", folder, "-o", tmp_path / "x.safetensors",
               "--img2vid", folder) == 2
    assert "give both" in capsys.readouterr().err


def media_free_load(path):
    from inbetweening.backward import load_backward_weights_file

    return load_backward_weights_file(path)
