"""Several keyframes and loops: the joining logic (exactly, with a pipeline that blends its two
keyframes linearly), the real pipeline's segments and seeds, the CLI, and, on the bundled toy
model, that a three-keyframe video passes through each keyframe at its frame index."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from inbetweening import cli, media
from inbetweening.inputs import to_pil
from inbetweening.keyframes import inbetween_sequence, interpolate, join_segments, layout
from inbetweening.loading import bundled_model, load_pipeline
from inbetweening.options import SamplingOptions
from inbetweening.pipeline import InbetweenPipelineOutput
from inbetweening.utils import InbetweeningError


class BlendPipeline:
    """A pipeline stand-in whose segment is the linear blend from start to end keyframe, so that
    every frame of a joined video says exactly which segment and position it came from. It
    records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, start, end, *, num_frames, generator=None, output_type="pil", **kw):
        assert output_type == "np"
        a = np.asarray(to_pil(start), dtype=np.float64) / 255
        b = np.asarray(to_pil(end), dtype=np.float64) / 255
        self.calls.append((a, b, num_frames, kw))
        t = np.linspace(0, 1, num_frames)[:, None, None, None]
        return InbetweenPipelineOutput(frames=((1 - t) * a + t * b)[None])


def random_images(n: int, seed: int = 0, size=(16, 12)) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def as_float(im: np.ndarray) -> np.ndarray:
    return im.astype(np.float64) / 255


@pytest.mark.parametrize("count,frames", [(2, 5), (3, 5), (4, 8)])
def test_keyframes_land_at_their_indices(count, frames):
    keys = random_images(count)
    video = inbetween_sequence(BlendPipeline(), keys, num_frames=frames)
    plan = layout(keys)
    assert len(video) == plan.length(frames) == (count - 1) * (frames - 1) + 1
    for k, key in enumerate(keys):
        index = plan.keyframe_index(k, frames)
        assert index == k * (frames - 1)
        assert np.abs(video[index] - as_float(key)).max() < 1e-12
    # Shared boundary frames are not doubled: no two neighbouring frames are the same.
    assert all(np.abs(video[i + 1] - video[i]).max() > 0 for i in range(len(video) - 1))
    # Between keyframes, frame j of segment s is the blend at j / (frames - 1).
    for s in range(count - 1):
        for j in range(frames):
            t = j / (frames - 1)
            expected = (1 - t) * as_float(keys[s]) + t * as_float(keys[s + 1])
            assert np.abs(video[s * (frames - 1) + j] - expected).max() < 1e-12


def test_loop_goes_back_to_the_first_keyframe_without_repeating_it():
    keys = random_images(3)
    frames = 5
    pipe = BlendPipeline()
    video = inbetween_sequence(pipe, keys, loop=True, num_frames=frames)
    plan = layout(keys, loop=True)
    assert plan.closed and plan.pairs == [(0, 1), (1, 2), (2, 0)]
    assert len(video) == plan.length(frames) == 3 * (frames - 1)
    assert np.abs(video[0] - as_float(keys[0])).max() < 1e-12
    # The last frame is one step before the first keyframe comes round again: played on repeat,
    # the video steps from it to frame 0 like any other two neighbouring frames.
    t = (frames - 2) / (frames - 1)
    before_first = (1 - t) * as_float(keys[2]) + t * as_float(keys[0])
    assert np.abs(video[-1] - before_first).max() < 1e-12
    assert all(np.abs(video[i] - as_float(keys[0])).max() > 0 for i in range(1, len(video)))
    assert np.abs(pipe.calls[-1][0] - as_float(keys[2])).max() == 0
    assert np.abs(pipe.calls[-1][1] - as_float(keys[0])).max() == 0


def test_same_image_first_and_last_is_a_loop_without_an_extra_segment():
    a, b, c = random_images(3)
    frames = 4
    pipe = BlendPipeline()
    closed = inbetween_sequence(pipe, [a, b, c, a.copy()], num_frames=frames)
    assert len(pipe.calls) == 3  # a->b, b->c, c->a: nothing added
    assert len(closed) == 3 * (frames - 1)
    # The same as asking for a loop through a, b, c.
    looped = inbetween_sequence(BlendPipeline(), [a, b, c], loop=True, num_frames=frames)
    np.testing.assert_array_equal(closed, looped)
    # --loop with the same image first and last does not add an a->a segment either.
    pipe = BlendPipeline()
    again = inbetween_sequence(pipe, [a, b, c, a], loop=True, num_frames=frames)
    assert len(pipe.calls) == 3
    np.testing.assert_array_equal(again, looped)
    assert layout([a, b, c, a]).keyframe_index(3, frames) == 0


def test_one_keyframe_with_loop_and_too_few_keyframes():
    (a,) = random_images(1)
    video = inbetween_sequence(BlendPipeline(), [a], loop=True, num_frames=6)
    assert len(video) == 5 and np.abs(video - as_float(a)).max() < 1e-12
    with pytest.raises(InbetweeningError, match="at least two keyframes"):
        inbetween_sequence(BlendPipeline(), [a], num_frames=6)
    with pytest.raises(InbetweeningError, match="at least two keyframes"):
        layout([])


def test_join_segments_keeps_the_old_behaviour():
    segs = [np.full((4, 2, 2, 3), i, dtype=np.float32) for i in range(3)]
    assert len(join_segments(segs, False)) == 10
    assert len(join_segments(segs, True)) == 9
    np.testing.assert_array_equal(join_segments(segs, False)[[0, 3, 4, 6, 7, 9]],
                                  np.stack([segs[i][0] for i in (0, 0, 1, 1, 2, 2)]))


def test_segments_are_the_real_pipelines_calls_in_order(tiny_pipe, keyframes):
    """On the tiny random pipeline: the joined video is exactly its per-pair videos, each drawing
    its noise from the one generator in turn; the same seed gives the same video."""
    k1, k2 = keyframes
    k3 = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(11))
    kw = dict(num_inference_steps=2, num_frames=4, reinject_count=1)
    video = inbetween_sequence(tiny_pipe, [k1, k2, k3], generator=torch.Generator().manual_seed(5),
                               **kw)
    g = torch.Generator().manual_seed(5)
    first = tiny_pipe(k1, k2, generator=g, output_type="np", **kw).frames[0]
    second = tiny_pipe(k2, k3, generator=g, output_type="np", **kw).frames[0]
    assert video.shape == (7, 64, 64, 3)
    np.testing.assert_array_equal(video, np.concatenate([first, second[1:]]))
    again = inbetween_sequence(tiny_pipe, [k1, k2, k3], generator=torch.Generator().manual_seed(5),
                               **kw)
    np.testing.assert_array_equal(video, again)
    other = inbetween_sequence(tiny_pipe, [k1, k2, k3], generator=torch.Generator().manual_seed(6),
                               **kw)
    assert np.abs(video - other).max() > 1e-3


def test_interpolate_is_the_options_call_seeded_and_counted(tiny_pipe, keyframes):
    """keyframes.interpolate (what interpolate, render and the nodes share): the pipeline call of
    the options under the model's defaults, with one generator from the seed; the predictions of
    every segment counted; side by side puts the keyframes beside each frame."""
    from inbetweening.keyframes import interpolate
    from inbetweening.options import SamplingOptions

    k1, k2 = keyframes
    tiny_pipe.defaults = {"num_inference_steps": 2}
    options = SamplingOptions(frames=4, reinject=1, fps=5)
    video = interpolate(tiny_pipe, [k1, k2], options, seed=5, loop=True)
    kw = dict(num_inference_steps=2, num_frames=4, reinject_count=1, fps=5)
    g = torch.Generator().manual_seed(5)
    there = tiny_pipe(k1, k2, generator=g, output_type="np", **kw).frames[0]
    back = tiny_pipe(k2, k1, generator=g, output_type="np", **kw).frames[0]
    np.testing.assert_array_equal(video.frames, np.concatenate([there, back[1:-1]]))
    assert video.fps == 5 and video.predictions == 2 * tiny_pipe.num_predictions == 2 * 3
    side = interpolate(tiny_pipe, [k1, k2], options, seed=5, side_by_side=True)
    assert side.frames.shape == (4, 64, 64 * 3 + 2 * 4, 3)
    np.testing.assert_array_equal(side.frames[:, :, 68:132], there)


def test_interpolate_passes_call_arguments_and_checks_options_and_seed(tiny_pipe, keyframes):
    """Extra pipeline arguments go over the options' (the ComfyUI nodes pass their callback);
    options and seed are checked before any sampling."""
    k1, k2 = keyframes
    options = SamplingOptions(steps=2, frames=4, size=(64, 64))
    video = interpolate(tiny_pipe, [k1, k2], options, seed=9)
    steps = []
    bucket = interpolate(tiny_pipe, [k1, k2], options, seed=9, motion_bucket_id=30,
                         callback_on_step_end=lambda pipe, i, t, x: steps.append(i) or {})
    assert steps == [0, 1] and np.abs(bucket.frames - video.frames).max() > 1e-4
    with pytest.raises(InbetweeningError, match="seed"):
        interpolate(tiny_pipe, [k1, k2], options, seed=-1)
    with pytest.raises(InbetweeningError, match="steps"):
        interpolate(tiny_pipe, [k1, k2], options.replace(steps=0), seed=9)


# -- the CLI --------------------------------------------------------------------------------------

@pytest.fixture
def keyframe_files(tmp_path):
    paths = []
    for i, im in enumerate(random_images(3, seed=4, size=(64, 64))):
        paths.append(tmp_path / f"k{i}.png")
        PIL.Image.fromarray(im).save(paths[-1])
    return paths


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def test_cli_three_keyframes_loop_and_side_by_side(tiny_model_dir, keyframe_files, tmp_path,
                                                   capsys):
    model = tiny_model_dir / "model"  # 6 frames per segment
    common = ["--model", model, "--backward", tiny_model_dir / "backward.safetensors",
              "--steps", "1", "--seed", "0", "--device", "cpu", "--fps", "5"]
    out = tmp_path / "three.mp4"
    assert run_cli("interpolate", *keyframe_files, "-o", out, *common) == 0
    video, fps = media.read_video(out)
    assert video.shape == (11, 64, 64, 3) and fps == 5
    assert "segment 2/2" in capsys.readouterr().out

    looped = tmp_path / "loop"
    assert run_cli("interpolate", *keyframe_files, "--loop", "-o", looped, *common) == 0
    assert sorted(p.name for p in looped.glob("frame_*")) == [f"frame_{i:04d}.png" for i in range(15)]

    side = tmp_path / "side.gif"
    assert run_cli("interpolate", *keyframe_files[:2], "--side-by-side", "-o", side, *common) == 0
    with PIL.Image.open(side) as im:
        assert im.size == (64 * 3 + 2 * 4, 64)  # first keyframe | video | last keyframe
        sheet = np.asarray(im.convert("RGB")).astype(int)
    first, last = (np.asarray(PIL.Image.open(p).convert("RGB")).astype(int)
                   for p in keyframe_files[:2])
    left, right = sheet[:, :64], sheet[:, -64:]
    # (random-noise keyframes lose a little to the gif palette)
    assert np.abs(left - first).mean() < 0.5 * np.abs(left - last).mean()
    assert np.abs(right - last).mean() < 0.5 * np.abs(right - first).mean()


def test_cli_frames_are_interpolate_frames(tiny_model_dir, keyframe_files, tmp_path):
    """The PNG frames `interpolate` writes are the shared core's video, as 8-bit values."""
    model, weights = tiny_model_dir / "model", tiny_model_dir / "backward.safetensors"
    out = tmp_path / "frames"
    assert run_cli("interpolate", *keyframe_files[:2], "-o", out, "--model", model, "--backward",
                   weights, "--steps", "2", "--reinject", "1", "--seed", "4", "--device",
                   "cpu") == 0
    written, _ = media.read_video(out)
    pipe = load_pipeline(model, weights, "cpu", quiet=True)
    images = [media.read_image(p) for p in keyframe_files[:2]]
    video = interpolate(pipe, images, SamplingOptions(steps=2, reinject=1), seed=4)
    np.testing.assert_array_equal(written, np.stack(media.as_uint8(video.frames)))


def test_cli_keyframe_errors_write_nothing(tiny_model_dir, keyframe_files, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    wide = tmp_path / "wide.png"
    PIL.Image.new("RGB", (128, 64)).save(wide)
    common = ["--model", tiny_model_dir / "model", "--steps", "1", "--device", "cpu"]
    assert run_cli("interpolate", keyframe_files[0], "-o", out, *common) == 2
    assert "at least two keyframes" in capsys.readouterr().err
    assert run_cli("interpolate", *keyframe_files[:2], wide, "-o", out, *common) == 2
    assert "aspect ratios" in capsys.readouterr().err
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".out*")) == []


# -- the bundled toy model ------------------------------------------------------------------------

@pytest.mark.skipif(bundled_model() is None, reason="the toy model is not bundled in this checkout")
@pytest.mark.slow
def test_three_keyframe_toy_video_passes_through_each_keyframe():
    """On the trained toy model: frame k * (F - 1) of a three-keyframe video is, to a tenth, as
    near (mean squared pixel distance) to keyframe k as the nearest frame, which lies at most
    one frame away (a vehicle moves 2 px a frame: neighbouring frames are nearly as close), and
    it is nearer to keyframe k than to the other keyframes."""
    from dataclasses import replace

    from inbetweening.loading import load_pipeline
    from inbetweening.toy.models import WORLD
    from inbetweening.toy.world import HELD_OUT_SEED, make_clip

    pipe = load_pipeline(device="cpu", dtype="fp32", quiet=True)
    pipe.set_progress_bar_config(disable=True)
    frames = int(pipe.defaults.get("num_frames", pipe.unet.config.num_frames))
    # One true clip through all three keyframes: slower vehicles (within the trained speeds) so
    # that one stays in view the whole way.
    long = replace(WORLD, frames=2 * (frames - 1) + 1, max_speed=2.6, max_sprites=1)
    checked = 0
    for index in range(2):
        clip = make_clip(HELD_OUT_SEED + 17, index, long, stay_in_view=True).video[0]
        keys = [clip[k * (frames - 1)] for k in range(3)]
        video = inbetween_sequence(pipe, keys, generator=torch.Generator().manual_seed(index),
                                   num_frames=frames,
                                   **{k: v for k, v in pipe.defaults.items() if k != "num_frames"})
        assert len(video) == len(clip)
        keys_np = [k.permute(1, 2, 0).numpy() for k in keys]
        dist = np.array([[((f - key) ** 2).mean() for f in video] for key in keys_np])
        for k in range(3):
            at = k * (frames - 1)
            assert abs(int(dist[k].argmin()) - at) <= 1, (index, k, dist[k].round(4))
            assert dist[k, at] <= 1.1 * dist[k].min(), (index, k, dist[k].round(4))
            others = [dist[j, at] for j in range(3) if j != k]
            assert dist[k, at] < min(others), (index, k)
            checked += 1
    assert checked == 6
