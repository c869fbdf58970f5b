"""The evaluation harness end to end: sets, baselines, every metric path, resuming, two processes,
bad input. Diffusion methods run on the tiny random model at small settings (2 steps, 6 frames,
64x64): their numbers mean nothing, the machinery is what is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from inbetweening import baselines, cli, evaluation, media, metrics
from inbetweening.toy import world
from inbetweening.toy.tracker import track, trajectory_error
from inbetweening.utils import InbetweeningError

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.jit.(script|load). is deprecated:DeprecationWarning",
    "ignore:.*torch_dtype. is deprecated:FutureWarning")

FRAMES = 6
METHODS = "gi,trf,flow,crossfade"
STEPS = 2


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory):
    return evaluation.make_toy_set(tmp_path_factory.mktemp("sets") / "toy", 3, frames=FRAMES)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return {"model": str(tiny_model_dir / "model"),
            "backward": str(tiny_model_dir / "backward.safetensors")}


@pytest.fixture(scope="module")
def full_run(toy_set, model, tmp_path_factory):
    """One uninterrupted single-process run, the reference for the resume and 2-process tests."""
    out = tmp_path_factory.mktemp("runs") / "full"
    result = evaluation.evaluate(toy_set, METHODS, out, device="cpu", options={"steps": STEPS},
                                 quiet=True, **model)
    return out, result


# -- sets -----------------------------------------------------------------------------------------

def test_toy_set_is_readable_and_true(toy_set):
    manifest = json.loads((toy_set / "manifest.json").read_text())
    assert manifest["kind"] == "toy" and manifest["frames"] == FRAMES
    assert (manifest["width"], manifest["height"]) == (64, 64)
    bset = evaluation.load_set(toy_set)
    assert len(bset.pairs) == 3
    for pair in bset.pairs:
        seed, index = pair.source["toy_seed"], pair.source["toy_index"]
        assert seed >= world.HELD_OUT_SEED
        clip = pair.true_clip()
        assert clip.shape == (FRAMES, 64, 64, 3)
        start, end = pair.keyframes()
        assert np.array_equal(start, clip[0]) and np.array_equal(end, clip[-1])
        # The stored clip is the world's clip, and the stored tracks are its truth.
        cfg = world.WorldConfig(frames=FRAMES)
        truth = world.make_clip(seed, index, cfg, stay_in_view=True)
        expected = (truth.video[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(clip, expected)
        centers = np.array([s["centers"] for s in pair.sprites])
        assert np.allclose(centers, truth.centers[0][truth.present[0]].numpy(), atol=1e-3)
        tracks = track(clip, [s["color"] for s in pair.sprites], centers[:, 0])
        assert trajectory_error(tracks.positions, centers) < 0.3


def test_toy_set_refuses_training_seeds_and_existing_folder(toy_set, tmp_path):
    with pytest.raises(InbetweeningError, match="held-out"):
        evaluation.make_toy_set(tmp_path / "t", 2, seed=5)
    with pytest.raises(InbetweeningError, match="already exists"):
        evaluation.make_toy_set(toy_set, 2)
    assert not (tmp_path / "t").exists()


def frame_value(i: int) -> int:
    return 4 * i + 10


def test_video_set_pairs_and_resampling(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    # A 60-frame frame folder (96x64, not square) whose frame i is the grey level 4 i + 10, so
    # each clip frame says which source frame it came from.
    frames = [np.full((64, 96, 3), frame_value(i), np.uint8) for i in range(60)]
    for i in range(60):
        frames[i][:, 40:56] = 255  # a white band in the middle, kept by the centre crop
    media.write_video(frames, videos / "long")
    media.write_video([np.zeros((64, 64, 3), np.uint8)] * 10, videos / "short.gif")  # too short
    (videos / "broken.mp4").write_text("not a video")
    media.write_video([np.full((64, 64, 3), 100, np.uint8)] * 30, videos / "clip.mp4")

    out, counts = evaluation.make_video_set(videos, tmp_path / "set", gap=25, pairs_per_video=3,
                                            frames=6, size=(64, 64))
    assert counts == {"videos": 4, "unreadable": 1, "too_short": 1, "pairs": 6}
    bset = evaluation.load_set(out)
    assert bset.kind == "videos" and bset.frames == 6
    long_pairs = [p for p in bset.pairs if p.id.startswith("long")]
    assert [p.source["first_frame"] for p in long_pairs] == [0, 17, 34]
    for pair in long_pairs:
        s = pair.source["first_frame"]
        clip = pair.true_clip()
        assert clip.shape == (6, 64, 64, 3)
        idx = np.rint(np.linspace(s, s + 25, 6)).astype(int)
        assert idx[0] == s and idx[-1] == s + 25
        assert [int(f[0, 0, 0]) for f in clip] == [frame_value(i) for i in idx]
        assert (clip[:, 32, 32] == 255).all()  # the centre crop keeps the middle band
    assert [p.source["first_frame"] for p in bset.pairs if p.id.startswith("clip")] == [0, 2, 4]


def test_video_set_without_usable_videos(tmp_path):
    (tmp_path / "v").mkdir()
    media.write_video([np.zeros((64, 64, 3), np.uint8)] * 5, tmp_path / "v" / "a.gif")
    with pytest.raises(InbetweeningError, match="no usable video"):
        evaluation.make_video_set(tmp_path / "v", tmp_path / "set", gap=25, frames=6,
                                  size=(64, 64))
    assert not (tmp_path / "set").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InbetweeningError, match="no videos"):
        evaluation.make_video_set(tmp_path / "empty", tmp_path / "set", frames=6, size=(64, 64))


def test_video_set_takes_the_models_geometry(tmp_path, model):
    (tmp_path / "v").mkdir()
    media.write_video([np.full((64, 64, 3), i, np.uint8) for i in range(30)], tmp_path / "v" / "a")
    out, _ = evaluation.make_video_set(tmp_path / "v", tmp_path / "set", gap=20,
                                       model=model["model"])
    bset = evaluation.load_set(out)
    assert (bset.frames, bset.width, bset.height) == (6, 64, 64)  # the tiny model's


# -- baselines ------------------------------------------------------------------------------------

def test_crossfade_is_a_linear_blend():
    a, b = np.zeros((8, 8, 3), np.float32), np.ones((8, 8, 3), np.float32)
    video = baselines.crossfade(a, b, 5)
    assert video.shape == (5, 8, 8, 3)
    assert np.allclose(video[:, 0, 0, 0], [0, 0.25, 0.5, 0.75, 1])


def test_flow_moves_where_crossfade_fades():
    """A smooth pattern sliding 8 px: flow interpolation lands near the true in-between frames,
    a crossfade does not."""
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)

    def scene(shift):
        x = xs - shift
        return np.stack([0.5 + 0.4 * np.sin(x / 5) * np.cos(ys / 7),
                         0.5 + 0.3 * np.cos(x / 4 + ys / 9),
                         0.5 + 0.2 * np.sin((x + ys) / 6)], -1).astype(np.float32)

    true = np.stack([scene(s) for s in np.linspace(0, 8, 5)])
    flow, fade = baselines.flow(true[0], true[-1], 5), baselines.crossfade(true[0], true[-1], 5)
    assert np.array_equal(flow[0], true[0]) and np.array_equal(flow[-1], true[-1])
    for i in (1, 2, 3):
        assert metrics.psnr(flow[i], true[i]) > metrics.psnr(fade[i], true[i]) + 2
    with pytest.raises(InbetweeningError):
        baselines.flow(true[0], true[0][:32], 5)


# -- evaluate -------------------------------------------------------------------------------------

def test_evaluate_writes_metrics_table_and_plots(full_run, toy_set):
    out, result = full_run
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"methods", "pairs"}
    assert list(saved["methods"]) == METHODS.split(",")
    toy_metrics = {"psnr", "ssim", "endpoint_psnr", "trajectory_error", "direction_consistency",
                   "blended", "predictions", "seconds"}
    for m, values in saved["methods"].items():
        assert set(values) == toy_metrics
    # the cost of a video: gi 2 steps + 5 re-injections on the first one; trf its release's
    # schedule (no jump back at 2 steps); none for the baselines
    assert [saved["methods"][m]["predictions"] for m in METHODS.split(",")] == [7, 2, 0, 0]
    assert all(saved["methods"][m]["seconds"] > 0 for m in METHODS.split(","))
    assert len(saved["pairs"]) == 3 * 4
    bset = evaluation.load_set(toy_set)
    # The crossfade numbers, recomputed here from the set alone.
    for pair in bset.pairs:
        rec = next(r for r in saved["pairs"] if r["pair"] == pair.id and r["method"] == "crossfade")
        start, end = pair.keyframes()
        video = (baselines.crossfade(start, end, FRAMES) * 255).round().astype(np.uint8)
        true = pair.true_clip()
        assert rec["psnr"] == pytest.approx(np.mean(metrics.psnr_per_frame(video, true)[1:-1]))
        assert rec["endpoint_psnr"] == 100.0
        assert len(rec["per_frame"]["trajectory_error"]) == FRAMES
    mean = np.mean([r["psnr"] for r in saved["pairs"] if r["method"] == "crossfade"])
    assert saved["methods"]["crossfade"]["psnr"] == pytest.approx(mean)
    # Diffusion pairs carry their own seed, derived from the pair id.
    rec = next(r for r in saved["pairs"] if r["method"] == "gi")
    assert rec["seed"] == evaluation.pair_seed(0, rec["pair"])
    table = (out / "metrics.md").read_text()
    assert "| gi |" in table and "| flow |" in table and "direction consistency" in table
    assert "LPIPS, FID, FVD skipped" in table
    for name in ("bars.png", "per_frame.png"):
        with PIL.Image.open(out / "plots" / name) as im:
            assert im.format == "PNG" and im.width > 300


def test_interrupted_run_resumes_to_the_same_table(full_run, toy_set, model, tmp_path):
    reference, _ = full_run
    out = tmp_path / "resumed"
    seen = []

    def stop_after_three(method, pair_id):
        seen.append((method, pair_id))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(toy_set, METHODS, out, device="cpu", options={"steps": STEPS},
                            quiet=True, on_record=stop_after_three, **model)
    assert not (out / "metrics.json").exists()
    assert len(list((out / "records").rglob("*.json"))) == 3
    again = []
    evaluation.evaluate(toy_set, METHODS, out, device="cpu", options={"steps": STEPS},
                        quiet=True, on_record=lambda m, p: again.append((m, p)), **model)
    assert len(again) == 12 - 3 and not set(again) & set(seen)  # finished pairs not redone
    assert (out / "metrics.md").read_text() == (reference / "metrics.md").read_text()
    assert stable(out) == stable(reference)
    # A finished run asked again does nothing new and writes the same table.
    evaluation.evaluate(toy_set, METHODS, out, device="cpu", options={"steps": STEPS},
                        quiet=True, on_record=lambda m, p: pytest.fail("redone"), **model)
    assert stable(out) == stable(reference)


def test_other_settings_are_not_mixed_in(full_run, toy_set, model):
    out, _ = full_run
    before = (out / "metrics.json").read_text()
    with pytest.raises(InbetweeningError, match="other settings"):
        evaluation.evaluate(toy_set, METHODS, out, device="cpu", options={"steps": 3},
                            quiet=True, **model)
    assert (out / "metrics.json").read_text() == before


def stable(out):
    """metrics.json without the wall times (which differ from run to run)."""
    saved = json.loads((out / "metrics.json").read_text())
    for entry in list(saved["methods"].values()) + saved["pairs"]:
        entry.pop("seconds")
    return saved


def test_two_processes_give_the_same_table(full_run, toy_set, model, tmp_path):
    reference, _ = full_run
    out = tmp_path / "two"
    launcher = Path(sys.executable).with_name("accelerate")
    # The processes use the session's thread count, so that they sum in the same order as the
    # in-process reference run (results are then equal to the last bit).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # On a machine without GPUs, --multi_gpu makes accelerate start N CPU processes (MULTI_CPU).
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "inbetweening.cli",
           "evaluate", str(toy_set), "--methods", METHODS, "--out", str(out), "--device", "cpu",
           "--steps", str(STEPS), "--model", model["model"], "--backward", model["backward"]]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Both processes did work.
    assert "evaluate [0]" in run.stderr and "evaluate [1]" in run.stderr
    assert (out / "metrics.md").read_text() == (reference / "metrics.md").read_text()
    assert stable(out) == stable(reference)


def test_learned_metrics_with_stand_in_networks(toy_set, tmp_path):
    """LPIPS, FID and FVD through tiny TorchScript networks in the shipped conventions."""
    import torch
    from test_metrics import TinyI3D, TinyInception, TinyVGG16LPIPS, save_script

    nets = {"lpips": save_script(TinyVGG16LPIPS(), tmp_path / "vgg16.pt"),
            "inception": save_script(TinyInception(), tmp_path / "inception.pt"),
            "fvd": save_script(TinyI3D(), tmp_path / "i3d.pt")}
    out = tmp_path / "learned"
    result = evaluation.evaluate(toy_set, "flow,crossfade", out, quiet=True, **nets)
    for m in ("flow", "crossfade"):
        assert {"lpips", "fid", "fvd"} <= set(result["methods"][m])
    table = (out / "metrics.md").read_text()
    assert "skipped" not in table and "FID" in table and "FVD" in table and "LPIPS" in table
    # FID and FVD recomputed here from the saved videos and the set's true clips.
    bset = evaluation.load_set(toy_set)
    true = torch.stack([metrics.as_video(p.true_clip()) for p in bset.pairs])
    fake = torch.stack([metrics.as_video(np.load(out / "videos" / "flow" / f"{p.id}.npz")["video"])
                        for p in bset.pairs])
    torch.set_grad_enabled(False)
    inception = metrics.load_inception(nets["inception"])
    fid = metrics.frechet_distance_of(inception.fn(fake[:, 1:-1].flatten(0, 1)).double(),
                                      inception.fn(true[:, 1:-1].flatten(0, 1)).double())
    assert result["methods"]["flow"]["fid"] == pytest.approx(fid, rel=1e-6)
    i3d = metrics.load_video_features(nets["fvd"])
    fvd = metrics.frechet_distance_of(i3d.fn(fake).double(), i3d.fn(true).double())
    assert result["methods"]["flow"]["fvd"] == pytest.approx(fvd, rel=1e-6)
    lpips = metrics.load_lpips(nets["lpips"])
    d = lpips.fn(fake[0], true[0])
    rec = next(r for r in result["pairs"] if r["method"] == "flow")
    assert rec["lpips"] == pytest.approx(float(d[1:-1].mean()), rel=1e-6)
    torch.set_grad_enabled(True)


# -- bad input through the command line -----------------------------------------------------------

def run_cli(args, capsys):
    code = cli.main(args)
    err = capsys.readouterr().err
    return code, err


def test_bad_input_gives_one_line_errors(toy_set, tmp_path, capsys):
    out = tmp_path / "out"
    no_manifest = tmp_path / "nomanifest"
    no_manifest.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(toy_set, broken)
    shutil.rmtree(broken / "pairs" / evaluation.load_set(toy_set).pairs[1].id / "clip")
    from safetensors.torch import save_file

    import torch

    st = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, st)
    cases = [
        ([str(no_manifest)], "no manifest.json"),
        ([str(tmp_path / "nowhere")], "set folder not found"),
        ([str(broken)], "names missing files"),
        ([str(toy_set), "--methods", "gi,film"], "unknown method 'film'"),
        ([str(toy_set), "--methods", "flow", "--fvd-weights", str(st)], "--fvd-weights"),
        ([str(toy_set), "--methods", "flow", "--inception-weights", str(tmp_path / "x.pt")],
         "no such file"),
    ]
    for args, message in cases:
        code, err = run_cli(["evaluate", *args, "--out", str(out)], capsys)
        assert code == 2, args
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not out.exists()


@pytest.mark.parametrize("method", ["gi", "gi-sequential"])
def test_gi_without_backward_weights_is_refused_before_work(method, toy_set, tiny_model_dir,
                                                            tmp_path, capsys):
    out = tmp_path / "out"
    bare = tmp_path / "bare-model"  # the model folder without its backward weights
    shutil.copytree(tiny_model_dir / "model", bare)
    (bare / "backward.safetensors").unlink()
    code, err = run_cli(["evaluate", str(toy_set), "--methods", f"crossfade,{method}", "--out",
                         str(out), "--model", str(bare), "--device", "cpu"], capsys)
    assert code == 2 and f"method {method!r} needs backward weights" in err
    assert not (out / "records").exists() and not (out / "metrics.json").exists()


def test_benchmark_commands(tmp_path, capsys):
    code = cli.main(["benchmark", "toy", "--n", "2", "--frames", "5", "--out",
                     str(tmp_path / "toy")])
    assert code == 0
    bset = evaluation.load_set(tmp_path / "toy")
    assert len(bset.pairs) == 2 and bset.frames == 5
    code, err = run_cli(["benchmark", "toy", "--n", "2", "--out", str(tmp_path / "toy")], capsys)
    assert code == 2 and "already exists" in err
    code, err = run_cli(["benchmark", "make", "--videos", str(tmp_path / "none"), "--out",
                         str(tmp_path / "set")], capsys)
    assert code == 2 and "not found" in err


def test_paired_comparison_of_two_arms_over_pairs():
    """The per-pair difference's mean, a bootstrap interval over pairs that repeats with its
    seed and narrows with more pairs, and the count of pairs each side wins."""
    from inbetweening.evaluation.report import paired_comparison

    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.0, 2.0, 4.0, 2.0]  # differences 1, 0, -1, 2
    r = paired_comparison(a, b)
    assert r["mean_difference"] == 0.5 and r["pairs"] == 4
    assert (r["a_better"], r["b_better"]) == (1, 2)  # lower is better by default; a tie
    assert -1.0 <= r["ci_low"] < 0.5 < r["ci_high"] <= 2.0
    assert paired_comparison(a, b, seed=0) == r
    up = paired_comparison(a, b, higher_is_better=True)
    assert (up["a_better"], up["b_better"]) == (2, 1)
    same = paired_comparison([3.0] * 5, [1.0] * 5)
    assert same["ci_low"] == same["ci_high"] == 2.0
    rng = np.random.default_rng(1)
    few, many = (paired_comparison(rng.normal(0.5, 1, n), np.zeros(n)) for n in (10, 1000))
    assert many["ci_high"] - many["ci_low"] < (few["ci_high"] - few["ci_low"]) / 5
    assert many["ci_low"] < 0.5 < many["ci_high"]
    with pytest.raises(ValueError):
        paired_comparison([1.0, 2.0], [1.0])
