"""Every bad input gets one ``error:`` line, exit status 2 and no output, before any long work;
odd but valid keyframes (16-bit, floating point) are scaled, not clipped; a killed write leaves
nothing that the next run does not clean up. Then a fuzz over the numeric options."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest
import torch
from safetensors.torch import save_file

from inbetweening import backward, cli, media
from inbetweening.utils import atomic_path


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    g = np.random.default_rng(0)
    paths = {}
    for name in ("a", "b"):
        paths[name] = tmp_path / f"{name}.png"
        PIL.Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[name])
    text = PIL.PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * (3 << 20), zip=True)
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "text.png", pnginfo=text)
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "icc.png", icc_profile=b"\0" * (3 << 20))
    (tmp_path / "bomb90.png").write_bytes(png_claiming(10_000, 9_000))
    (tmp_path / "bomb400.png").write_bytes(png_claiming(20_000, 20_000))
    (tmp_path / "plainfile").write_text("keep")
    empty_index = tmp_path / "empty-model"
    shutil.copytree(tiny_model_dir / "model", empty_index)
    (empty_index / "model_index.json").write_text("{}")
    paths["empty-model"] = empty_index
    good, _ = backward.load_backward_weights_file(tiny_model_dir / "backward.safetensors")
    meta = {"format": backward.FORMAT}
    for kind in ("int", "bool", "complex", "nan"):
        bad = dict(good)
        name = sorted(bad)[0]
        bad[name] = {"int": bad[name].to(torch.int32), "bool": bad[name] > 0,
                     "complex": bad[name].to(torch.complex64),
                     "nan": bad[name].clone().fill_(float("nan"))}[kind]
        save_file(bad, str(tmp_path / f"{kind}.safetensors"), metadata=meta)
    return paths


def model_args(tiny_model_dir):
    return ["--model", tiny_model_dir / "model", "--backward",
            tiny_model_dir / "backward.safetensors", "--device", "cpu", "--steps", "1"]


CASES = {  # name: (changes to `interpolate a.png b.png -o OUT.mp4 MODEL`, words of the error)
    "png text chunk": ({"start": "text.png"}, "cannot read image"),
    "png colour profile": ({"start": "icc.png"}, "cannot read image"),
    "90-megapixel bomb": ({"start": "bomb90.png"}, "too large"),
    "400-megapixel bomb": ({"start": "bomb400.png"}, "too large"),
    "output under a file": ({"out": "plainfile/x.mp4"}, "is a file, not a folder"),
    "frames folder over a file": ({"out": "plainfile", "extra": ["--overwrite"]}, "is a file"),
    "empty output": ({"out": ""}, "output path is empty"),
    "decode chunk -1": ({"extra": ["--decode-chunk", "-1"]}, "decode-chunk"),
    "seed beyond 64 bits": ({"extra": ["--seed", str(2**70)]}, "seed"),
    "reinject fraction nan": ({"extra": ["--reinject-fraction", "nan"]}, "reinject-fraction"),
    "reinject fraction 2": ({"extra": ["--reinject-fraction", "2"]}, "reinject-fraction"),
    "reinject fraction -1": ({"extra": ["--reinject-fraction", "-1"]}, "reinject-fraction"),
    "reinject -1": ({"extra": ["--reinject", "-1"]}, "reinject"),
    "frames 0": ({"extra": ["--frames", "0"]}, "frames"),
    "guidance nan": ({"extra": ["--guidance", "nan,nan"]}, "guidance"),
    "guidance inf": ({"extra": ["--guidance", "inf,inf"]}, "guidance"),
    "device meta": ({"extra": ["--device", "meta"]}, "cannot run a model"),
    "model_index {}": ({"model": "empty-model"}, "does not describe an SVD model"),
    "int backward weights": ({"backward": "int.safetensors"}, "not of real floating-point"),
    "bool backward weights": ({"backward": "bool.safetensors"}, "not of real floating-point"),
    "complex backward weights": ({"backward": "complex.safetensors"}, "not of real"),
    "nan backward weights": ({"backward": "nan.safetensors"}, "NaN or infinite"),
}


def one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(case, files, tmp_path, tiny_model_dir, capsys):
    change, words = CASES[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    args = model_args(tiny_model_dir)
    if "model" in change:
        args[1] = files[change["model"]]
    if "backward" in change:
        args[3] = tmp_path / change["backward"]
    out = change.get("out", "out.mp4")
    argv = ["interpolate", tmp_path / change.get("start", "a.png"), files["b"], "-o",
            tmp_path / out if out else "", *args, *change.get("extra", [])]
    line = one_error_line(capsys, cli.main([str(a) for a in argv]))
    assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "plainfile").read_text() == "keep"


def test_the_app_and_train_refuse_bad_options_before_loading(files, tmp_path, capsys):
    assert "--port" in one_error_line(capsys, cli.main(["app", "--port", "99999"]))
    code = cli.main(["train", "--model", str(files["empty-model"]), "--data", str(tmp_path),
                     "-o", str(tmp_path / "run")])
    assert "does not describe an SVD model" in one_error_line(capsys, code)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", np.full((8, 8), 32896, np.uint16), 128),  # 16-bit: scaled by 257, not clipped
    ("I;16", np.full((8, 8), 100, np.uint16), 0),  # a dark 16-bit image stays dark
    ("F", np.full((8, 8), 0.5, np.float32), 128),  # floating point in [0, 1]
])
def test_deep_keyframes_are_scaled_not_clipped(mode, values, expected, tmp_path):
    path = tmp_path / ("k.png" if mode != "F" else "k.tif")
    PIL.Image.fromarray(values).save(path)
    with PIL.Image.open(path) as im:
        assert im.mode == mode
    rgb = np.asarray(media.read_image(path))
    assert rgb.shape == (8, 8, 3) and (rgb == expected).all()


def test_a_killed_write_leaves_a_partial_that_the_next_write_removes(tmp_path):
    target = tmp_path / "video.mp4"
    code = ("import os, sys\nfrom inbetweening.utils import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n    tmp.write_text('half')\n"
            "    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    assert [p.name for p in tmp_path.iterdir()][0].endswith(".partial.mp4")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


NUMERIC = {
    "--frames": ["0", "-3", "3", "6", "1e9", "nan", str(2**70)],
    "--steps": ["-1", "0", "1", "2", "inf", "100000", str(2**70)],
    "--fps": ["-7", "0", "1", "7", "1000000"],
    "--reinject": ["-1", "0", "1", "99999"],
    "--reinject-fraction": ["nan", "inf", "-inf", "-0.5", "0", "0.5", "1", "1.5", "1e308"],
    "--guidance": ["1,1", "1,3", "nan,1", "inf,inf", "-1,2", "1e308,1", "3", "a,b"],
    "--max-unet-batch": ["-1", "0", "1", "2", "1e3", str(2**70)],
    "--decode-chunk": ["-1", "0", "1", "3", str(2**70)],
    "--seed": ["-1", "0", "7", str(2**64), str(2**70), "nan"],
}


def test_fuzz_of_numeric_options_gives_a_video_or_one_error_line(files, tmp_path,
                                                                 tiny_model_dir, capsys):
    rng = random.Random(20261126)
    for trial in range(14):
        picks = {flag: rng.choice(values) for flag, values in NUMERIC.items()
                 if rng.random() < 0.4}
        out = tmp_path / f"fuzz{trial}.gif"
        argv = ["interpolate", files["a"], files["b"], "-o", out, *model_args(tiny_model_dir)]
        argv = [str(a) for a in argv]
        argv[argv.index("--steps") + 1] = "1"
        for flag, value in picks.items():
            argv += [flag, value]
        code = cli.main(argv)
        if code == 0:
            frames, _ = media.read_video(out)
            assert frames.ndim == 4 and len(frames) >= 3, picks
            capsys.readouterr()
        else:
            one_error_line(capsys, code)
            assert not out.exists(), picks
        assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_convert_official_refuses_garbage_in_one_line(tiny_model_dir, tmp_path, capsys):
    garbage = tmp_path / "garbage" / "unet"
    garbage.mkdir(parents=True)
    (garbage / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    no_map = tmp_path / "no-map" / "unet"
    no_map.mkdir(parents=True)
    (no_map / "diffusion_pytorch_model.safetensors.index.json").write_text('{"metadata": {}}')
    (tmp_path / "plainfile").write_text("keep")
    unet = tiny_model_dir / "model" / "unet"
    cases = [([garbage, "-o", tmp_path / "a.safetensors"], "cannot read"),
             ([no_map, "-o", tmp_path / "b.safetensors"], "weight_map"),
             ([unet, "-o", tmp_path / "plainfile" / "c.safetensors"], "is a file")]
    for argv, words in cases:
        line = one_error_line(capsys, cli.main(["convert-official"] + [str(a) for a in argv]))
        assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage", "no-map", "plainfile"]
