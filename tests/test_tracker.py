"""The toy tracker and its metrics, on true toy clips (ground truth known exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inbetweening.toy import world
from inbetweening.toy.tracker import (
    direction_consistency, endpoint_psnr, speed_along_heading, track, track_metrics,
    trajectory_error,
)
from inbetweening.utils import InbetweeningError


def held_out_clips(count: int):
    clips, index = [], 0
    while len(clips) < count:
        try:
            clips.append(world.make_clip(world.HELD_OUT_SEED, index, stay_in_view=True))
        except RuntimeError:  # a clip whose vehicles could not be kept in view
            pass
        index += 1
    return clips


def truth(clip):
    keep = clip.present[0].numpy()
    return (clip.colors[0].numpy()[keep], clip.centers[0].numpy()[keep],
            clip.headings[0].numpy()[keep])


def as_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8, as the clip is stored in a set."""
    return (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


CLIPS = held_out_clips(12)


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: f"clip{c.seeds[0][1]}")
def test_true_clips_are_tracked_exactly(clip):
    colors, centers, headings = truth(clip)
    tracks = track(as_uint8(clip.video[0]), colors, centers[:, 0])
    assert tracks.found.all()
    assert trajectory_error(tracks.positions, centers) < 0.3
    assert np.abs(tracks.positions - centers).max() < 0.6
    assert direction_consistency(tracks.positions, headings) == 1.0


def test_reversed_clips_go_the_wrong_way():
    for clip in CLIPS:
        colors, centers, headings = truth(clip)
        backwards = as_uint8(clip.video[0].flip(0))
        tracks = track(backwards, colors, centers[:, -1])
        # The positions are right (the reversed clip's own truth) ...
        assert trajectory_error(tracks.positions, centers[:, ::-1]) < 0.3
        # ... but every step goes tail first.
        assert direction_consistency(tracks.positions, headings) == 0.0


def test_speed_along_heading_of_tracked_clips_and_speed_classes():
    """Tracked true clips of the ambiguous world give each vehicle its true speed, and the
    world's speed split puts it in its true class; reversed, the speed is negative; a vehicle
    lost in all but one step has no speed."""
    ambiguous = world.WORLDS["ambiguous"]
    split = ambiguous.speed_split()
    assert 1.25 * 1.1 < split < 4.0 * 0.9
    assert world.WORLDS["toy"].speed_split() == pytest.approx((2.0 * 3.5) ** 0.5)
    classes = set()
    for i in range(6):
        clip = world.make_clip(world.HELD_OUT_SEED, i, ambiguous, stay_in_view=True)
        colors, centers, headings = truth(clip)
        speeds = clip.speeds[0].numpy()[clip.present[0].numpy()]
        tracks = track(as_uint8(clip.video[0]), colors, centers[:, 0])
        for s in range(len(colors)):
            got = speed_along_heading(tracks.positions[s], headings[s], tracks.found[s])
            assert got == pytest.approx(speeds[s], abs=0.1)
            assert (got >= split) == (speeds[s] >= split)
            classes.add(bool(got >= split))
            back = speed_along_heading(tracks.positions[s][::-1], headings[s])
            assert back == pytest.approx(-got)
    assert classes == {True, False}  # both classes met
    found = np.zeros(len(tracks.positions[0]), dtype=bool)
    found[:2] = True
    assert speed_along_heading(tracks.positions[0], headings[0], found) is None


def test_still_video_does_not_move():
    """Copying the first keyframe into every frame: no step forward, large error."""
    clip = CLIPS[0]
    colors, centers, headings = truth(clip)
    still = as_uint8(clip.video[0][:1].repeat(world.WorldConfig().frames, 1, 1, 1))
    tracks = track(still, colors, centers[:, 0])
    assert direction_consistency(tracks.positions, headings) == 0.0
    assert np.allclose(tracks.positions, tracks.positions[:, :1], atol=1e-3)
    # The true vehicles travel 2-3.5 px per frame; standing still misses by several pixels.
    assert trajectory_error(tracks.positions, centers) > 3.0


def test_blurred_pale_sprites_are_still_tracked():
    """Generated sprites come out soft and washed out: the tracker must still follow them."""
    kernel = torch.tensor([1.0, 4, 6, 4, 1])
    kernel = (kernel[:, None] * kernel[None]) / kernel.sum() ** 2
    for clip in CLIPS[:6]:
        colors, centers, headings = truth(clip)
        v = clip.video[0]
        blurred = F.conv2d(F.pad(v, (2, 2, 2, 2), mode="replicate"),
                           kernel.expand(3, 1, 5, 5).contiguous(), groups=3)
        pale = 0.75 * blurred + 0.25 * v.mean((2, 3), keepdim=True)
        tracks = track(pale, colors, centers[:, 0])
        assert trajectory_error(tracks.positions, centers) < 0.6
        assert direction_consistency(tracks.positions, headings) == 1.0


def test_missing_sprite_is_lost_and_stays():
    """A sprite that vanishes (its colour nowhere near) is reported lost, at its last place."""
    clip = CLIPS[0]
    colors, centers, headings = truth(clip)
    video = clip.video[0].clone()
    video[4:] = 0.4  # from frame 4 on, a plain grey frame
    gone = video
    tracks = track(gone, colors, centers[:, 0])
    assert tracks.found[:, :4].all() and not tracks.found[:, 4:].any()
    assert np.allclose(tracks.positions[:, 4:], tracks.positions[:, 3:4])
    assert direction_consistency(tracks.positions, headings) == pytest.approx(3 / 7)


def test_tracker_metrics_of_true_and_shifted_clips():
    clip = CLIPS[1]
    colors, centers, headings = truth(clip)
    video = as_uint8(clip.video[0])
    m = track_metrics(video, clip.colors[0], clip.centers[0], clip.headings[0], clip.present[0],
                      video[0], video[-1])
    assert m["trajectory_error"] < 0.3 and m["direction_consistency"] == 1.0
    assert m["endpoint_psnr"] == 100.0  # identical keyframes: the cap, not infinity
    assert len(m["per_frame_trajectory_error"]) == len(video)
    assert m["lost_fraction"] == 0.0
    # A whole video shifted 3 px right: the error is 3 px, the endpoints no longer match.
    shifted = np.roll(video, 3, axis=2)
    m2 = track_metrics(shifted, clip.colors[0], clip.centers[0], clip.headings[0],
                       clip.present[0], video[0], video[-1])
    assert 2.6 < m2["trajectory_error"] < 3.4
    assert m2["endpoint_psnr"] < 40


def test_endpoint_psnr_values():
    rng = np.random.default_rng(0)
    key0, key1 = rng.random((16, 16, 3)), rng.random((16, 16, 3))
    video = np.stack([key0, rng.random((16, 16, 3)), key1 + 0.1])
    # PSNR of a constant 0.1 error is 20 dB; the mean with the 100 dB cap is 60.
    assert endpoint_psnr(video, key0, key1) == pytest.approx(60.0, abs=1e-6)


def test_metric_input_errors():
    with pytest.raises(InbetweeningError):
        trajectory_error(np.zeros((1, 8, 2)), np.zeros((2, 8, 2)))
    with pytest.raises(InbetweeningError):
        track(np.zeros((4, 8, 8, 3)), np.zeros((2, 3)), np.zeros((1, 2)))
    with pytest.raises(InbetweeningError):
        direction_consistency(np.zeros((1, 8, 2)), np.zeros(1), present=[False])
