"""A fuzz of every command's options (``interpolate``'s is in test_bad_inputs.py): edge values
(0, -1, huge, NaN, infinity, '', words where numbers go, unknown choices) for each option in turn,
then seeded random values for several options at once. Every case is answered by one ``error:``
line and exit status 2 with nothing written, or is accepted: the work starts (here a stub raises
WorkStarted where the model would load, the clips be drawn or the app serve; convert-official
and the app's page run for real). Never a traceback."""

from __future__ import annotations

import dataclasses
import importlib
import random
import shutil
import typing
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import inbetweening.app
import inbetweening.keyframes
import inbetweening.loading
from inbetweening import cli, media, training
from inbetweening.app import InbetweenApp, Limits
from inbetweening.commands.app import AppSettings
from inbetweening.commands.demo import DemoSettings
from inbetweening.evaluation.set_options import ToySetOptions, VideoSetOptions
from inbetweening.options import SamplingOptions, scalar_type
from inbetweening.toy import world
from inbetweening.train_config import TrainConfig

SEED = 20261206
INTS = ["0", "-1", "1", "2", "3", "8", "1000", "1e3", "2.5", str(2**63), str(2**70), "nan",
        "inf", "", "x"]
FLOATS = ["0", "-0", "-1", "1e-300", "0.5", "1", "7", "1e308", "-1e308", "nan", "inf", "-inf",
          "", "x"]
SIZES = ["64x64", "128x64", "0x0", "65x64", "-64x64", "64", "64x64x64", "", "x", "nanxnan",
         "65536x65536", "6400x6400", "512x512"]
GUIDANCES = ["1,3", "1,1", "0,100", "nan,1", "-1,2", "1e308,1", "3", "", "a,b", "1,2,3"]
WORDS = ["", "bogus", "NaN", "-1"]


class WorkStarted(Exception):
    pass


def work_started(*a, **k):
    raise WorkStarted


def load_stub(model=None, backward=None, device=None, dtype=None, **kw):
    """Where a command loads its model: the device and dtype checked as loading does, then
    WorkStarted."""
    dev = inbetweening.loading.default_device(device)
    inbetweening.loading.parse_dtype(dtype, dev)
    inbetweening.loading.resolve_model(model)
    raise WorkStarted


@pytest.fixture
def stubs(monkeypatch):
    # The modules that bind a stubbed name at import are imported first, so that they keep the
    # real one after the test (inbetweening.demo imports make_clip).
    importlib.import_module("inbetweening.demo")
    for module, name, stub in [(inbetweening.loading, "load_pipeline", load_stub),
                               (training, "load_base", work_started),
                               (world, "make_clip", work_started),
                               (media, "read_video", work_started),
                               (inbetweening.app, "serve", work_started)]:
        monkeypatch.setattr(module, name, stub)


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Fuzz:
    """Runs cases of one command and checks each answer; counts them."""

    def __init__(self, capsys, root: Path, outputs: list[Path], resumable: bool = False):
        """``resumable``: a run stopped after it started may leave its output (evaluate's
        results, which the next run continues)."""
        self.capsys, self.root, self.outputs, self.resumable = capsys, root, outputs, resumable
        self.counts = {"refused": 0, "accepted": 0, "done": 0}

    def __call__(self, argv: list) -> str:
        before = snapshot(self.root)
        try:
            code = cli.main([str(a) for a in argv])
        except WorkStarted:
            code = None
        err = [line for line in self.capsys.readouterr().err.splitlines() if line.strip()]
        if code == 2:
            assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
            assert snapshot(self.root) == before, argv  # nothing written
            answer = "refused"
        else:
            assert code in (None, 0), (argv, code, err[-5:])
            answer = "accepted" if code is None else "done"
        for out in self.outputs:  # (a stub stopped the work, or the run finished: start afresh)
            if code is None and not self.resumable:
                assert not out.exists(), (argv, out)
            elif out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        self.counts[answer] += 1
        return answer

    def each_option(self, base: list, options: dict[str, list[str]]) -> None:
        """Every value of every option, one option at a time."""
        for flag, values in options.items():
            for value in values:
                self([*base, flag, value])

    def random(self, base: list, options: dict[str, list[str]], trials: int, seed: int) -> None:
        """Seeded random values of several options at once."""
        rng = random.Random(seed)
        for _ in range(trials):
            argv = list(base)
            for flag, values in options.items():
                if rng.random() < 0.35:
                    argv += [flag, rng.choice(values + [random_number(rng)])]
            self(argv)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def random_number(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randint(-10, 100))
    if kind == 1:
        return str(rng.randint(-2**70, 2**70))
    if kind == 2:
        return f"{rng.uniform(-2, 2) * 10 ** rng.randint(-5, 12):g}"
    return rng.choice(["nan", "inf", "-inf", "1e400", "0x10", " 3 "])


def numeric_options(cls, skip=()) -> dict[str, list[str]]:
    """Every numeric command-line option of the dataclass ``cls`` with the edge values."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False or "range" not in f.metadata:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = scalar_type(hints[f.name])
        found[flag] = SIZES if f.metadata.get("parse") is not None and kind is int else (
            INTS if kind is int else FLOATS)
    return found


def choice_options(cls, skip=()) -> dict[str, list[str]]:
    return {"--" + f.name.replace("_", "-"): [*map(str, f.metadata["choices"]), *WORDS]
            for f in dataclasses.fields(cls) if "choices" in f.metadata and f.name not in skip}


# -- the commands --------------------------------------------------------------------------------

def test_fuzz_train(stubs, toy_clips_dir, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    fuzz = Fuzz(capsys, tmp_path, [out])
    base = ["train", "--model", tiny_model_dir / "model", "--data", toy_clips_dir, "-o", out,
            "--no-progress"]
    options = {**numeric_options(TrainConfig), **choice_options(TrainConfig),
               "--sigma-set": ["0.5,1,2", "1", "", "nan", "0", "-1,2", "1e9", "a,b", ",,"],
               "--size": SIZES}
    fuzz.each_option(base, options)
    fuzz.random(base, options, 40, SEED)
    assert fuzz.counts["refused"] > 150 and fuzz.counts["accepted"] > 50, fuzz.counts
    print(f"train: {fuzz.total} cases {fuzz.counts}")


def test_fuzz_benchmark_toy(stubs, tmp_path, capsys):
    out = tmp_path / "set"
    fuzz = Fuzz(capsys, tmp_path, [out])
    base = ["benchmark", "toy", "--out", out]
    options = {**numeric_options(ToySetOptions), **choice_options(ToySetOptions)}
    fuzz.each_option(base, options)
    fuzz.random(base, options, 40, SEED + 1)
    assert fuzz.counts["refused"] > 40 and fuzz.counts["accepted"] > 10, fuzz.counts
    print(f"benchmark toy: {fuzz.total} cases {fuzz.counts}")


def test_fuzz_benchmark_make(stubs, toy_clips_dir, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "set"
    fuzz = Fuzz(capsys, tmp_path, [out])
    base = ["benchmark", "make", "--videos", toy_clips_dir, "--out", out]
    options = {**numeric_options(VideoSetOptions),
               "--model": ["", "toy", "toy-ambiguous", str(tiny_model_dir / "model"), "nowhere",
                           str(toy_clips_dir)]}
    fuzz.each_option(base, options)
    fuzz.random(base, options, 30, SEED + 2)
    assert fuzz.counts["refused"] > 30 and fuzz.counts["accepted"] > 10, fuzz.counts
    print(f"benchmark make: {fuzz.total} cases {fuzz.counts}")


def model_options(tiny_model_dir) -> dict[str, list[str]]:
    return {"--device": ["cpu", "cpu:0", "cpu:99", "cuda:9", "mps", "meta", "xpu", "", "gpu"],
            "--dtype": ["fp32", "bf16", "", "fp64"],
            "--model": [str(tiny_model_dir / "model"), "", "nowhere", "toy"]}


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> Path:
    from inbetweening.evaluation import make_toy_set

    return make_toy_set(tmp_path_factory.mktemp("sets") / "set", 1)


def test_fuzz_evaluate(toy_set, stubs, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "results"
    fuzz = Fuzz(capsys, tmp_path, [out], resumable=True)
    base = ["evaluate", toy_set, "--out", out, "--methods", "crossfade,gi", "--model",
            tiny_model_dir / "model"]
    options = {**numeric_options(SamplingOptions, skip=("frames", "size")),
               **choice_options(SamplingOptions, skip=("method", "frames", "size")),
               "--guidance": GUIDANCES, "--seed": INTS,
               "--methods": ["gi", "all", "", ",", "film", "crossfade,crossfade"],
               **model_options(tiny_model_dir)}
    fuzz.each_option(base, options)
    fuzz.random(base, options, 30, SEED + 3)
    assert fuzz.counts["refused"] > 80 and fuzz.counts["accepted"] > 40, fuzz.counts
    print(f"evaluate: {fuzz.total} cases {fuzz.counts}")


def test_fuzz_demo(stubs, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    fuzz = Fuzz(capsys, tmp_path, [out])
    base = ["demo", "-o", out]
    options = {**numeric_options(DemoSettings), **model_options(tiny_model_dir),
               "-o": ["", str(tmp_path), "/", str(tmp_path / "demo.mp4")]}
    fuzz.each_option(base, options)
    fuzz.random(base, options, 30, SEED + 4)
    assert fuzz.counts["refused"] > 30 and fuzz.counts["accepted"] > 10, fuzz.counts
    print(f"demo: {fuzz.total} cases {fuzz.counts}")


def test_fuzz_app_command(stubs, tmp_path, capsys):
    fuzz = Fuzz(capsys, tmp_path, [])
    options = {**numeric_options(AppSettings), "--host": ["127.0.0.1", "", "::1", "x" * 300]}
    fuzz.each_option(["app"], options)
    fuzz.random(["app"], options, 30, SEED + 5)
    assert fuzz.counts["refused"] > 20 and fuzz.counts["accepted"] > 10, fuzz.counts
    print(f"app: {fuzz.total} cases {fuzz.counts}")


def test_fuzz_convert_official(tmp_path, tiny_model_dir, capsys):
    """Real runs: converting the tiny model's UNet takes a moment."""
    unet = tiny_model_dir / "model" / "unet"
    (tmp_path / "plain").write_text("keep")
    out = tmp_path / "w.safetensors"
    fuzz = Fuzz(capsys, tmp_path, [out])
    options = {
        "finetuned": [str(unet), str(unet.parent), "", str(tmp_path / "plain"), "nowhere",
                      str(tmp_path)],
        "-o": [str(out), "", str(tmp_path / "plain"), str(tmp_path), str(tmp_path / "plain" / "x"),
               "/proc/w.safetensors"],
        "--img2vid": [str(unet), "", "nowhere"], "--base": [str(unet), "", str(tmp_path)],
        "--base-name": ["", "x" * 5000, "name\nwith a newline"],
        "--dtype": ["fp32", "fp16", "bf16", "", "int8"]}
    for name, values in options.items():
        for value in values:
            argv = {"finetuned": [str(unet)], "-o": ["-o", str(out)]}
            argv[name] = [value] if name == "finetuned" else [name, value]
            fuzz(["convert-official", *argv["finetuned"], *argv["-o"],
                  *sum((v for k, v in argv.items() if k not in ("finetuned", "-o")), [])])
    rng = random.Random(SEED + 6)
    for _ in range(10):
        argv = ["convert-official", rng.choice(options["finetuned"]), "-o",
                rng.choice(options["-o"])]
        for flag in ("--img2vid", "--base", "--base-name", "--dtype"):
            if rng.random() < 0.4:
                argv += [flag, rng.choice(options[flag])]
        fuzz(argv)
    assert (tmp_path / "plain").read_text() == "keep"
    assert fuzz.counts["refused"] > 10 and fuzz.counts["done"] > 5, fuzz.counts
    print(f"convert-official: {fuzz.total} cases {fuzz.counts}")


# -- the app's page: its handler takes what the browser sends ------------------------------------

PAGE_VALUES = {
    "method": ["gi", "trf", "forward", "", "nope", None, 3],
    "frames": [6, 3, 0, -1, 2.5, 1e308, float("nan"), float("inf"), "6", "", "x", None, 10**30],
    "steps": [1, 0, -1, 1001, 2.0, float("nan"), "1", "", None, 2**70],
    "seed": [0, -1, 2**64 - 1, 2**64, 1.5, float("nan"), float("inf"), "7", "", None],
    "size": ["64x64", "128x64", "", None, "0x0", "65x64", "6400x6400", "x", 64],
    "fps": [7, 0, -1, 241, 2.5, float("nan"), "7", "", None],
    "recipe": ["", None, "fast", "balanced", "slow", 1],
}


def test_fuzz_app_page(tiny_pipe, tmp_path, monkeypatch):
    def quick(pipe, images, *, loop, generator, on_segment, callback_on_step_end, **kw):
        f = kw.get("num_frames") or 6
        return np.zeros((f, kw.get("height", 64), kw.get("width", 64), 3), np.float32)
    monkeypatch.setattr(inbetweening.keyframes, "inbetween_sequence", quick)
    app = InbetweenApp(tiny_pipe, tmp_path / "work", Limits(), "a tiny test model")
    rng = np.random.default_rng(0)
    keys = []
    for i in range(2):
        keys.append(str(tmp_path / f"k{i}.png"))
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(keys[-1])
    good = {"method": "gi", "frames": 6, "steps": 1, "seed": 0, "size": "64x64", "fps": 7,
            "recipe": ""}
    cases = [{**good, name: value} for name, values in PAGE_VALUES.items() for value in values]
    pick = random.Random(SEED + 7)
    cases += [{name: pick.choice(values) for name, values in PAGE_VALUES.items()}
              for _ in range(30)]
    answers = {"done": 0, "refused": 0}
    for case in cases:
        video, files, message = app.generate(keys, case["method"], case["frames"], case["steps"],
                                             case["seed"], case["size"], case["fps"],
                                             recipe=case["recipe"])
        assert "something went wrong" not in message, (case, message)
        if message.startswith("**Done:**"):
            answers["done"] += 1
            assert video is not None and len(files) == 3
        else:
            assert message.startswith("**Error:** ") and video is None and files is None, case
            assert "\n" not in message, message
            answers["refused"] += 1
    assert answers["done"] > 10 and answers["refused"] > 30, answers
    print(f"app page: {len(cases)} cases {answers}")


@pytest.mark.parametrize("values", [dict(max_bytes=0), dict(max_pixels=-1),
                                    dict(max_bytes=float("nan")), dict(max_pixels=10**9),
                                    dict(max_bytes="20")])
def test_app_limits_refuse_what_no_upload_could_meet(values):
    with pytest.raises(inbetweening.utils.InbetweeningError):
        Limits(**values)
