"""The blending measure on true toy clips and on hand-made blended ones (ground truth known)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inbetweening.toy import world
from inbetweening.toy.blending import blending, blobs
from inbetweening.utils import InbetweeningError

CFG = world.WorldConfig()
SHIFT = 16.0  # pixels across the heading: a copy beside the vehicle, apart from it (width 10)


def held_out_clips(count: int, start: int = 0):
    clips, k = [], start
    while len(clips) < count:
        try:
            clips.append(world.make_clip(world.HELD_OUT_SEED + k, k, stay_in_view=True))
        except RuntimeError:  # a clip whose vehicles could not be kept in view
            pass
        k += 1
    return clips


CLIPS = held_out_clips(12)


def as_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8, as a clip is stored in a set."""
    return (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def measure(clip, video=None, **kwargs) -> dict:
    video = clip.video[0] if video is None else video
    return blending(video, clip.colors[0], clip.present[0], **kwargs)


def with_keyframes(clip, middle: torch.Tensor) -> torch.Tensor:
    """``middle`` with the clip's true first and last frames (given, not generated)."""
    video = middle.clone()
    video[0], video[-1] = clip.video[0, 0], clip.video[0, -1]
    return video


def plain_background(clip) -> torch.Tensor:
    """(3, H, W) background of a true clip: each pixel from a frame where no vehicle covers it
    (vehicles and stripes are brighter than any background)."""
    video = clip.video[0]
    darkest = video.amax(1).argmin(0)
    return torch.stack([video[darkest, c, torch.arange(64)[:, None], torch.arange(64)]
                        for c in range(3)])


def render(clip, body_centers: torch.Tensor) -> torch.Tensor:
    """The clip's vehicles redrawn over its background with their bodies at ``body_centers``
    ((S', F, 2), present vehicles only)."""
    n = int(clip.present[0].sum())
    headings = clip.headings[0, :n].double()
    direction = torch.stack([headings.cos(), headings.sin()], -1)[:, None]
    geometric = body_centers.double() + (CFG.stripe / 2) * direction
    return world._render(plain_background(clip), geometric, headings, clip.colors[0, :n], CFG)


def beside(clip):
    """Body centres SHIFT pixels to one side of every vehicle, where the copies stay in view and
    clear of the other vehicles, or None if neither side fits."""
    n = int(clip.present[0].sum())
    centers, headings = clip.centers[0, :n].double(), clip.headings[0, :n].double()
    across = torch.stack([-headings.sin(), headings.cos()], -1)[:, None]
    margin = math.hypot(CFG.length, CFG.width) / 2 + 1
    for side in (1, -1):
        moved = centers + side * SHIFT * across
        inside = ((moved > margin) & (moved < CFG.size - margin)).all()
        clear = all((moved[a] - centers[b]).norm(dim=-1).min() > CFG.length + 2
                    for a in range(n) for b in range(n) if a != b)
        if inside and clear:
            return moved
    return None


# Hand-made blends of a true clip; each keeps the true keyframes.
def shifted_average(clip):
    """Each vehicle twice at half strength: in its place and SHIFT pixels beside it."""
    moved = beside(clip)
    return None if moved is None else with_keyframes(clip, 0.5 * clip.video[0] +
                                                     0.5 * render(clip, moved))


def keyframe_crossfade(clip):
    """Every middle frame the mean of the two keyframes: each vehicle at its start and end."""
    video = clip.video[0]
    return with_keyframes(clip, (0.5 * video[0] + 0.5 * video[-1]).expand_as(video))


def faded(clip):
    """The vehicles at 30 % strength over the background in the middle frames."""
    return with_keyframes(clip, 0.3 * clip.video[0] + 0.7 * plain_background(clip))


def time_reversed_average(clip):
    """The clip averaged with itself played backwards: frame t shows the vehicle at t and at
    F-1-t (5, 3 and 1 steps apart in frames 1/6, 2/5 and 3/4)."""
    video = clip.video[0]
    return with_keyframes(clip, 0.5 * video + 0.5 * video.flip(0))


def paler_and_blurred(clip):
    """What a generator makes of a true clip: soft, washed-out (75 %) vehicles, one of each."""
    kernel = torch.tensor([1.0, 4, 6, 4, 1])
    kernel = (kernel[:, None] * kernel[None]) / kernel.sum() ** 2
    video = clip.video[0]
    blurred = F.conv2d(F.pad(video, (2, 2, 2, 2), mode="replicate"),
                       kernel.expand(3, 1, 5, 5).contiguous(), groups=3)
    return with_keyframes(clip, 0.75 * blurred + 0.25 * video.mean((2, 3), keepdim=True))


MORE_CLIPS = held_out_clips(40)


def made(kind, count: int = 10):
    """``count`` clips made by ``kind`` (clips it cannot make are skipped)."""
    out = []
    for clip in MORE_CLIPS:
        video = kind(clip)
        if video is not None:
            out.append((clip, video))
        if len(out) == count:
            return out
    raise AssertionError(f"only {len(out)} clips for {kind.__name__}")


def test_the_test_renderer_reproduces_true_clips():
    """The hand-made copies are drawn like the true vehicles (same renderer, same background)."""
    for clip in CLIPS[:4]:
        n = int(clip.present[0].sum())
        error = (render(clip, clip.centers[0, :n]) - clip.video[0]).abs()
        # Only float32 rounding, and a sub-sample flipped on an edge here and there.
        assert error.max() < 0.1 and (error > 1e-3).float().mean() < 1e-3


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: f"clip{c.seeds[0][1]}")
def test_true_clips_are_not_blended(clip):
    m = measure(clip, as_uint8(clip.video[0]))
    assert m["split"] == 0.0
    assert 0.95 < m["min_mass_ratio"] and abs(m["mass_ratio"] - 1) < 0.05
    assert abs(m["spread"] - 1) < 0.1
    assert m["blended"] == 0.0 and not m["blended_per_frame"].any()


BLENDS = {  # kind -> what every clip of it must also show beyond being judged blended
    shifted_average: lambda m: m["split"] > 0.4,  # two equal blobs: about 0.5 of the mass split off
    keyframe_crossfade: lambda m: m["split"] > 0.15 and m["spread"] > 1.1,
    faded: lambda m: m["mass_ratio"] < 0.3,  # 30 % strength falls below MIN_ALPHA: 0 to 0.2
}


@pytest.mark.parametrize("kind", list(BLENDS), ids=lambda k: k.__name__)
def test_blended_clips_are_told_from_true_ones(kind):
    clean = [measure(clip)["blended"] for clip in CLIPS]
    blends = [measure(clip, video) for clip, video in made(kind)]
    # Every true clip scores 0; every blended one at least half of its vehicle-frames.
    assert max(clean) < 0.25 < min(m["blended"] for m in blends)
    assert min(m["blended"] for m in blends) >= 0.5
    assert all(BLENDS[kind](m) for m in blends)


def test_time_reversed_average_is_blended_where_the_copies_are_apart():
    """Frames 1 and 6 show copies 5 steps (10-17 px) apart: seen. Frames 3 and 4 show them a
    step apart, overlapping like motion blur: not counted as blended."""
    for clip, video in made(time_reversed_average):
        m = measure(clip, video)
        assert m["blended"] >= 0.3
        assert m["spread_per_frame"][:, [1, 6]].min() > 1.3
        assert m["spread"] > 1.15


def test_a_paler_blurred_vehicle_is_not_blended():
    """Being soft and pale (as generated vehicles are) is not being in two places or faded."""
    for clip, video in made(paler_and_blurred):
        m = measure(clip, video)
        assert m["blended"] == 0.0
        assert m["split"] < 0.05 and 0.55 < m["min_mass_ratio"] < 0.9


def test_a_vehicle_shown_twice_at_full_strength():
    """A full copy beside each vehicle: half the mass split off, twice the mass."""
    for clip, _ in made(shifted_average, count=8):
        copies = render(clip, beside(clip))
        drawn = (copies - plain_background(clip)).abs().amax(1, keepdim=True) > 1e-3
        twice = with_keyframes(clip, torch.where(drawn, copies, clip.video[0]))
        m = measure(clip, twice)
        assert m["split"] > 0.45 and 1.9 < m["mass_ratio"] < 2.1 and m["blended"] == 1.0


def test_specks_of_the_colour_are_ignored():
    """Single pixels of a vehicle's colour (noise) are specks below MIN_BLOB, not copies."""
    clip = CLIPS[0]
    video = clip.video[0].clone()
    color = clip.colors[0, 0]
    x, y = clip.centers[0, 0, 0].round().int().tolist()
    for dx, dy in [(20, 0), (0, 20), (-20, 0), (0, -20)]:  # one pixel, well away, each side
        px, py = (x + dx) % 64, (y + dy) % 64
        video[1:-1, :, py, px] = color
    assert measure(clip, video)["split"] == 0.0
    assert measure(clip, video, min_blob=0.0)["split"] > 0.0  # they are there, and would count


def test_blobs_of_a_share_map():
    share = torch.zeros(16, 16, dtype=torch.float64)
    share[1:4, 1:4] = 1.0  # 9 pixels of full colour
    share[8:11, 8:11] = 0.5  # 9 pixels of half colour
    share[14, 14] = 1.0  # a speck
    share[1:4, 10:13] = 0.3  # below MIN_ALPHA: not a blob
    masses, areas = blobs(share)
    assert sorted(masses.tolist()) == [4.5, 9.0] and sorted(areas.tolist()) == [9, 9]
    share[4, 4] = 1.0  # a diagonal chain of pixels joins the two squares (8-connected)
    share[5:8, 5:8] = 1.0
    masses, _ = blobs(share)
    assert masses.tolist() == pytest.approx([1 + 9 + 9 + 4.5])


def test_inputs_and_errors():
    clip = next(c for c in CLIPS if not c.present[0].all())  # one vehicle, one empty slot
    as_float = measure(clip)
    as_bytes = measure(clip, as_uint8(clip.video[0]))
    assert as_float["split_per_frame"].shape == (1, CFG.frames)  # the empty slot is left out
    assert as_float["mass_ratio_per_frame"][0, 0] == 1.0
    assert as_bytes["mass_ratio"] == pytest.approx(as_float["mass_ratio"], abs=0.02)
    with pytest.raises(InbetweeningError):
        blending(clip.video[0][:2], clip.colors[0], clip.present[0])
    with pytest.raises(InbetweeningError):
        blending(clip.video[0], clip.colors[0], [False, False])
    with pytest.raises(InbetweeningError):
        blending(clip.video[0], clip.colors[0], [True])
