"""The toy world: short synthetic clips with time-asymmetric motion and ground truth.

Each clip shows one or two "vehicles" over a static textured background. A vehicle is a
coloured rectangle with a white stripe at its front, and it always drives the way it faces, at a
constant speed. Played backwards, vehicles drive tail first, which never happens in a forward clip:
that asymmetry is what an image-to-video model learns and what the paper's method must respect.

Everything is a pure function of ``(seed, index)``: clip ``i`` of seed ``s`` is the same whatever
batch it is drawn in, so training sets, held-out sets and tests can name their clips by seed.
Training uses seeds below ``HELD_OUT_SEED``; evaluation and demos use seeds from it upwards.

Two worlds are named in :data:`WORLDS`: ``toy`` (the default: one frame fixes the whole motion,
since speed varies little) and ``ambiguous``, where each vehicle drives either slowly or fast, two
well-separated speeds with equal odds. From a first frame alone both futures are plausible, so a
forward model from the start frame and a backward model from the end frame can each pick a
different one unless something ties them together; given both keyframes the truth is fixed by
how far apart the vehicle is in them.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..utils import mix_seed

HELD_OUT_SEED = 1_000_000


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of the toy world, in pixels of the output frames."""

    size: int = 64
    frames: int = 8
    min_sprites: int = 1
    max_sprites: int = 2
    length: float = 15.0  # vehicle length along its heading
    width: float = 10.0  # vehicle width
    stripe: float = 4.0  # white front marker, part of the length
    min_speed: float = 2.0  # pixels per frame
    max_speed: float = 3.5
    supersample: int = 4  # rendering is anti-aliased by drawing at this factor and averaging
    # If given, each vehicle drives at one of these speeds (equal odds, +-speed_jitter relative)
    # instead of a speed uniform in [min_speed, max_speed].
    speed_modes: tuple[float, ...] = ()
    speed_jitter: float = 0.1

    def speed_range(self) -> tuple[float, float]:
        """The slowest and fastest speed a vehicle of this world can have."""
        if not self.speed_modes:
            return self.min_speed, self.max_speed
        return (min(self.speed_modes) * (1 - self.speed_jitter),
                max(self.speed_modes) * (1 + self.speed_jitter))

    def speed_split(self) -> float:
        """The speed that parts slow vehicles from fast ones: the geometric mean of the slowest
        and the fastest speed mode (of the speed range in a world without modes)."""
        modes = self.speed_modes or (self.min_speed, self.max_speed)
        return math.sqrt(min(modes) * max(modes))


WORLDS = {
    "toy": WorldConfig(),
    "ambiguous": WorldConfig(speed_modes=(1.25, 4.0)),
}


@dataclass
class Clips:
    """A batch of clips with their ground truth.

    ``video``: (B, F, 3, H, W) in [0, 1]. ``centers``: (B, S, F, 2) as (x, y) pixel coordinates of
    the centre of each vehicle's coloured body (the part a colour tracker sees). ``headings``: (B, S)
    radians, image convention (x right, y down). ``colors``: (B, S, 3). ``present``: (B, S), False
    for unused sprite slots (clips have different sprite counts).
    """

    video: torch.Tensor
    centers: torch.Tensor
    headings: torch.Tensor
    speeds: torch.Tensor
    colors: torch.Tensor
    present: torch.Tensor
    seeds: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.video.shape[0]

    def reversed(self) -> "Clips":
        """The same clips played backwards (what a forward model should never produce)."""
        return Clips(
            self.video.flip(1), self.centers.flip(2), self.headings + math.pi, self.speeds,
            self.colors, self.present, self.seeds,
        )


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape or (1,), generator=g, dtype=torch.float64)


def _hsv(h: float, s: float, v: float) -> list[float]:
    return list(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _background(g: torch.Generator, size: int) -> torch.Tensor:
    """A muted two-colour gradient with smooth and fine texture, (3, size, size) in [0, 1]."""
    hue = float(_uniform(g, 0, 1))
    c0 = torch.tensor(_hsv(hue, float(_uniform(g, 0.0, 0.3)), float(_uniform(g, 0.25, 0.55))))
    c1 = torch.tensor(_hsv(hue + float(_uniform(g, -0.15, 0.15)), float(_uniform(g, 0.0, 0.3)),
                           float(_uniform(g, 0.25, 0.55))))
    angle = float(_uniform(g, 0, 2 * math.pi))
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size),
                            indexing="ij")
    t = (xs * math.cos(angle) + ys * math.sin(angle) + 0.5).clamp(0, 1)
    img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    smooth = torch.rand((1, 1, 6, 6), generator=g)
    smooth = F.interpolate(smooth, size=(size, size), mode="bicubic", align_corners=False)[0]
    fine = torch.rand((1, size, size), generator=g)
    img = img + 0.10 * (smooth - 0.5) + 0.06 * (fine - 0.5)
    return img.clamp(0, 1).float()


def _sprite_colors(g: torch.Generator, n: int) -> torch.Tensor:
    """Saturated colours with hues at least 0.2 apart, so a tracker can tell them apart."""
    base = float(_uniform(g, 0, 1))
    offsets = [0.0, 0.5, 0.25][:n]
    jitter = _uniform(g, -0.05, 0.05, n)
    cols = [_hsv(base + o + float(j), float(_uniform(g, 0.75, 1.0)), float(_uniform(g, 0.8, 1.0)))
            for o, j in zip(offsets, jitter)]
    return torch.tensor(cols, dtype=torch.float32)


def _speeds(g: torch.Generator, cfg: WorldConfig, n: int) -> torch.Tensor:
    if not cfg.speed_modes:
        return _uniform(g, cfg.min_speed, cfg.max_speed, n)
    modes = torch.tensor(cfg.speed_modes, dtype=torch.float64)
    pick = torch.randint(len(modes), (n,), generator=g)
    return modes[pick] * _uniform(g, 1 - cfg.speed_jitter, 1 + cfg.speed_jitter, n)


def _render(background: torch.Tensor, centers: torch.Tensor, headings: torch.Tensor,
            colors: torch.Tensor, cfg: WorldConfig) -> torch.Tensor:
    """Draw vehicles over the background. centers: (S, F, 2) geometric centres. -> (F, 3, H, W)."""
    s, size = cfg.supersample, cfg.size
    coords = (torch.arange(size * s, dtype=torch.float32) + 0.5) / s  # pixel-centre coordinates
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    frames = background.repeat_interleave(s, 1).repeat_interleave(s, 2)
    frames = frames.unsqueeze(0).repeat(cfg.frames, 1, 1, 1)  # (F, 3, Hs, Ws)
    white = torch.tensor([0.97, 0.97, 0.97])[:, None, None]
    for k in range(centers.shape[0]):
        dx, dy = math.cos(float(headings[k])), math.sin(float(headings[k]))
        cx = centers[k, :, 0].float()[:, None, None]
        cy = centers[k, :, 1].float()[:, None, None]
        u = (xs - cx) * dx + (ys - cy) * dy  # along the heading
        v = -(xs - cx) * dy + (ys - cy) * dx  # across it
        body = (u.abs() <= cfg.length / 2) & (v.abs() <= cfg.width / 2)  # (F, Hs, Ws)
        front = body & (u > cfg.length / 2 - cfg.stripe)
        paint = torch.where(front.unsqueeze(1), white, colors[k][:, None, None])
        frames = torch.where(body.unsqueeze(1), paint, frames)
    return F.avg_pool2d(frames, s)


def view_margin(cfg: WorldConfig) -> float:
    """How far a vehicle's centre keeps from the frame's edges when it must stay in view."""
    return math.hypot(cfg.length, cfg.width) / 2 + 1


def why_not_in_view(cfg: WorldConfig) -> str | None:
    """Why no vehicle of ``cfg`` can stay in view for the whole clip, or None if one can."""
    travel = (cfg.frames - 1) * cfg.speed_range()[0]
    room = cfg.size - 2 * view_margin(cfg)
    if travel > room:
        return (f"over {cfg.frames} frames even the slowest vehicle drives {travel:.0f} px, more "
                f"than the {max(room, 0):.0f} px a {cfg.size}x{cfg.size} frame has room for; use "
                "fewer frames or a larger size")
    return None


def make_clip(seed: int, index: int, cfg: WorldConfig = WorldConfig(), *,
              stay_in_view: bool = False, max_tries: int = 20_000) -> Clips:
    """Clip ``index`` of ``seed``. With ``stay_in_view`` the vehicles stay wholly in frame and apart
    throughout (resampled until they do), as evaluation pairs need; training clips let vehicles
    start anywhere, independently of their heading, and leave the frame."""
    g = torch.Generator().manual_seed(mix_seed(seed, index))
    background = _background(g, cfg.size)
    n = int(torch.randint(cfg.min_sprites, cfg.max_sprites + 1, (1,), generator=g))
    colors = _sprite_colors(g, n)
    steps = torch.arange(cfg.frames, dtype=torch.float64)
    margin = view_margin(cfg)
    if stay_in_view and (why := why_not_in_view(cfg)):
        raise ValueError(why)
    for _ in range(max_tries):
        headings = _uniform(g, 0, 2 * math.pi, n)
        speeds = _speeds(g, cfg, n)
        start = _uniform(g, 0, cfg.size, n, 2)
        direction = torch.stack([headings.cos(), headings.sin()], -1)  # (S, 2)
        centers = start[:, None, :] + steps[None, :, None] * speeds[:, None, None] * direction[:, None]
        if not stay_in_view:
            break
        inside = ((centers > margin) & (centers < cfg.size - margin)).all()
        apart = True
        for a in range(n):
            for b in range(a + 1, n):
                if (centers[a] - centers[b]).norm(dim=-1).min() < cfg.length + 2:
                    apart = False
        if inside and apart:
            break
    else:  # pragma: no cover - about 1 clip in 100 needs more than 200 tries, none 20,000
        raise RuntimeError(f"could not place vehicles in view for clip ({seed}, {index})")
    video = _render(background, centers, headings, colors, cfg)
    body_centers = centers - (cfg.stripe / 2) * direction[:, None, :]
    pad = cfg.max_sprites - n
    return Clips(
        video=video.unsqueeze(0),
        centers=F.pad(body_centers.float(), (0, 0, 0, 0, 0, pad)).unsqueeze(0),
        headings=F.pad(headings.float(), (0, pad)).unsqueeze(0),
        speeds=F.pad(speeds.float(), (0, pad)).unsqueeze(0),
        colors=F.pad(colors, (0, 0, 0, pad)).unsqueeze(0),
        present=(torch.arange(cfg.max_sprites) < n).unsqueeze(0),
        seeds=[(seed, index)],
    )


def make_clips(seed: int, count: int, cfg: WorldConfig = WorldConfig(), *, start: int = 0,
               stay_in_view: bool = False) -> Clips:
    """Clips ``start .. start+count-1`` of ``seed``, stacked into one batch."""
    return concat([make_clip(seed, i, cfg, stay_in_view=stay_in_view)
                   for i in range(start, start + count)])


def concat(parts: list[Clips]) -> Clips:
    return Clips(
        video=torch.cat([p.video for p in parts]),
        centers=torch.cat([p.centers for p in parts]),
        headings=torch.cat([p.headings for p in parts]),
        speeds=torch.cat([p.speeds for p in parts]),
        colors=torch.cat([p.colors for p in parts]),
        present=torch.cat([p.present for p in parts]),
        seeds=[s for p in parts for s in p.seeds],
    )
