"""Benchmark sets: keyframe pairs with the true clip between them, and a readable manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .. import media
from ..utils import InbetweeningError, atomic_path, check_regular_file
from .results import readable_json
from .set_options import ToySetOptions, VideoSetOptions, check_toy_work, check_video_work

MANIFEST = "manifest.json"
SET_FORMAT = "inbetweening-set/1"


# == sets =========================================================================================

@dataclass
class Pair:
    id: str
    start: Path
    end: Path
    clip: Path
    sprites: list[dict] | None = None  # toy sets: ground truth of each vehicle
    source: dict = field(default_factory=dict)

    def keyframes(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(media.read_image(self.start)), np.asarray(media.read_image(self.end)))

    def true_clip(self) -> np.ndarray:
        return media.read_video(self.clip)[0]


@dataclass
class BenchmarkSet:
    root: Path
    kind: str
    frames: int
    width: int
    height: int
    pairs: list[Pair]
    digest: str  # of the manifest: results belong to one version of a set

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"


def load_set(path: str | Path) -> BenchmarkSet:
    """Read and check a set folder: every file the manifest names must be there."""
    root = Path(path)
    if not root.is_dir():
        raise InbetweeningError(f"set folder not found: {root}")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise InbetweeningError(f"{root} is not a benchmark set (no {MANIFEST}); make one with "
                                "`inbetween benchmark make` or `inbetween benchmark toy`")
    text = manifest_path.read_bytes()
    try:
        manifest = json.loads(text)
        kind, frames = manifest["kind"], int(manifest["frames"])
        width, height = int(manifest["width"]), int(manifest["height"])
        entries = manifest["pairs"]
        pairs = [Pair(id=str(e["id"]), start=root / e["start"], end=root / e["end"],
                      clip=root / e["clip"], sprites=e.get("sprites"), source=e.get("source", {}))
                 for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise InbetweeningError(f"{manifest_path}: not a valid set manifest ({type(e).__name__}: "
                                f"{e})") from None
    if manifest.get("format") != SET_FORMAT:
        raise InbetweeningError(f"{manifest_path}: unknown format {manifest.get('format')!r} "
                                f"(expected {SET_FORMAT!r})")
    if not pairs:
        raise InbetweeningError(f"{manifest_path}: the set has no pairs")
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids) or any(not re.fullmatch(r"[\w.-]+", i) for i in ids):
        raise InbetweeningError(f"{manifest_path}: pair ids must be unique names of letters, "
                                "digits, '.', '-', '_'")
    missing = [str(p.relative_to(root)) for pair in pairs for p in (pair.start, pair.end)
               if not p.is_file()]
    missing += [str(pair.clip.relative_to(root)) for pair in pairs if not pair.clip.exists()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InbetweeningError(f"{manifest_path} names missing files: "
                                f"{', '.join(missing[:3])}{more}")
    if kind == "toy":
        for pair in pairs:
            _check_sprites(manifest_path, pair, frames)
    for pair in pairs:
        _check_keyframes(manifest_path, pair)
        _check_clip(manifest_path, pair, frames, width, height)
    return BenchmarkSet(root=root, kind=kind, frames=frames, width=width, height=height,
                        pairs=pairs, digest=hashlib.sha256(text).hexdigest()[:16])


def _check_sprites(manifest_path: Path, pair: Pair, frames: int) -> None:
    """A toy pair's ground truth: each vehicle's colour, heading and a centre per frame."""
    def bad(what):
        return InbetweeningError(f"{manifest_path}: pair {pair.id}: {what}")

    if not isinstance(pair.sprites, list) or not pair.sprites:
        raise bad("a toy set needs the sprites of every pair")
    for s in pair.sprites:
        if not isinstance(s, dict) or not {"color", "heading", "centers"} <= set(s):
            raise bad("each sprite needs color, heading and centers")
        try:
            color = np.asarray(s["color"], dtype=float)
            centers = np.asarray(s["centers"], dtype=float)
            float(s["heading"])
        except (TypeError, ValueError):
            raise bad("sprite values must be numbers") from None
        if color.shape != (3,) or centers.shape != (frames, 2) or not (
                np.isfinite(color).all() and np.isfinite(centers).all()):
            raise bad(f"each sprite needs an RGB color and {frames} (x, y) centers")


def _check_keyframes(manifest_path: Path, pair: Pair) -> None:
    """Both keyframes read as images (a run would stop at the pair otherwise, after work)."""
    for path in (pair.start, pair.end):
        try:
            media.read_image(path)
        except InbetweeningError as e:
            raise InbetweeningError(f"{manifest_path}: pair {pair.id}: {e}") from None


def _check_clip(manifest_path: Path, pair: Pair, frames: int, width: int, height: int) -> None:
    """The true clip has the set's frame count and size (checked on its PNG frames' headers),
    so a run does not stop half-way on a pair that cannot be scored."""
    if not pair.clip.is_dir():
        return  # a video file: checked when it is read
    files = sorted(p for p in pair.clip.iterdir() if p.suffix.lower() in media.IMAGE_SUFFIXES)
    size = None
    if files:
        try:
            with PIL.Image.open(check_regular_file(files[0], "an image")) as im:
                size = im.size
        except (OSError, ValueError, InbetweeningError):
            size = None
    if len(files) != frames or size != (width, height):
        raise InbetweeningError(f"{manifest_path}: pair {pair.id}: the true clip has "
                                f"{len(files)} frames of {size}; the set says {frames} of "
                                f"{(width, height)}")


def _write_pair(folder: Path, pair_id: str, frames: np.ndarray) -> dict:
    """Keyframes and true clip of one pair under ``folder/pairs/ID``; manifest paths."""
    base = folder / "pairs" / pair_id
    base.mkdir(parents=True)
    PIL.Image.fromarray(frames[0]).save(base / "start.png")
    PIL.Image.fromarray(frames[-1]).save(base / "end.png")
    media.write_video(list(frames), base / "clip")
    rel = f"pairs/{pair_id}"
    return {"id": pair_id, "start": f"{rel}/start.png", "end": f"{rel}/end.png",
            "clip": f"{rel}/clip"}


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(readable_json(manifest))


def _write_toy_pair(folder: Path, clip, seed: int, index: int) -> dict:
    """One toy clip's pair in the set ``folder``, and its manifest entry with the ground truth of
    every vehicle present."""
    video = (clip.video[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    entry = _write_pair(folder, f"toy-{seed}-{index:04d}", video)
    keep = clip.present[0].tolist()
    entry["sprites"] = [
        {"color": [round(float(c), 6) for c in clip.colors[0, s]],
         "heading": round(float(clip.headings[0, s]), 6),
         "speed": round(float(clip.speeds[0, s]), 6),
         "centers": [[round(float(x), 4), round(float(y), 4)]
                     for x, y in clip.centers[0, s].tolist()]}
        for s in range(len(keep)) if keep[s]]
    entry["source"] = {"toy_seed": seed, "toy_index": index}
    return entry


def make_toy_set(out: str | Path, n: int, seed: int | None = None, *, frames: int | None = None,
                 size: int | None = None, world_name: str = "toy",
                 overwrite: bool = False) -> Path:
    """A set of ``n`` held-out toy clips (vehicles kept in view) with their true tracks, from
    the named toy ``world`` (see :data:`inbetweening.toy.world.WORLDS`). The options' ranges and
    the machine's bounds: :mod:`.set_options`."""
    from ..toy import world

    ToySetOptions(n=n, seed=seed, frames=frames, size=None if size is None else (size, size),
                  world=world_name).check()
    seed = world.HELD_OUT_SEED if seed is None else seed
    if seed < world.HELD_OUT_SEED:
        raise InbetweeningError(f"toy sets use held-out seeds (>= {world.HELD_OUT_SEED}); seeds "
                                "below are training data")
    base = world.WORLDS[world_name]
    cfg = dataclasses.replace(base, frames=frames or base.frames, size=size or base.size)
    if why := world.why_not_in_view(cfg):
        raise InbetweeningError(f"cannot make toy pairs: {why}")
    check_toy_work(n, cfg.frames, cfg.size)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InbetweeningError(f"{out} already exists (pass --overwrite to replace it)")
    from tqdm.auto import tqdm

    entries, skipped, index = [], [], 0
    with (atomic_path(out, overwrite=overwrite, kind="set") as tmp,
          tqdm(total=n, desc="toy pairs") as bar):
        tmp.mkdir()
        while len(entries) < n:
            try:
                clip = world.make_clip(seed, index, cfg, stay_in_view=True)
            except RuntimeError:  # vehicles that cannot be kept in view: take the next clip
                skipped.append(index)
                index += 1
                if len(skipped) > 100 + n:  # (about 1 clip in 100 is skipped where it fits)
                    raise InbetweeningError(f"cannot make toy pairs: {len(skipped)} clips could "
                                            "not keep their vehicles in view; use fewer frames "
                                            "or a larger size") from None
                continue
            entries.append(_write_toy_pair(tmp, clip, seed, index))
            index += 1
            bar.update()
        _write_manifest(tmp, {
            "format": SET_FORMAT, "kind": "toy", "frames": cfg.frames, "width": cfg.size,
            "height": cfg.size, "world": world_name,
            "description": f"{n} held-out toy clips of seed {seed} (vehicles kept in view); "
                           "sprites: colour (RGB in [0, 1]), heading (radians, x right, y down), "
                           "speed (px/frame) and centre (x, y) of the coloured body per frame",
            "skipped_indices": skipped, "pairs": entries})
    return out


def model_geometry(model) -> tuple[int, int, int] | None:
    """(frames, width, height) a local diffusers SVD folder was configured for (from its config
    files, without loading weights), or None when unknown."""
    from ..locate import resolve_model
    from ..pipeline import vae_scale_factor

    source = resolve_model(model)
    if source is None or not Path(source).is_dir():
        return None
    try:
        unet = json.loads((Path(source) / "unet" / "config.json").read_text())
        vae = json.loads((Path(source) / "vae" / "config.json").read_text())
        scale = vae_scale_factor(vae)
        side = unet["sample_size"]
        h, w = (side, side) if isinstance(side, int) else side
        return int(unet["num_frames"]), int(w) * scale, int(h) * scale
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _video_sources(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InbetweeningError(f"video folder not found: {folder}")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in media.READABLE_VIDEOS:
            found.append(p)
        elif p.is_dir() and any(c.suffix.lower() in media.IMAGE_SUFFIXES for c in p.iterdir()):
            found.append(p)  # a folder of frames
    if not found:
        raise InbetweeningError(f"{folder}: no videos ({', '.join(media.READABLE_VIDEOS)}) or "
                                "frame folders in it")
    return found


def pair_starts(length: int, gap: int, count: int) -> list[int]:
    """First frames of up to ``count`` pairs ``gap`` frames apart, spread evenly over a video of
    ``length`` frames (empty if it is too short)."""
    last = length - 1 - gap
    if last < 0:
        return []
    return sorted({int(round(s)) for s in np.linspace(0, last, count)}) if count > 1 \
        else [last // 2]


def _set_geometry(model, frames: int | None, size) -> tuple[int, tuple[int, int]]:
    """The frame count and size of a set: those given, else the model's, else the toy world's
    (said)."""
    if frames is not None and size is not None:
        return frames, tuple(size)
    geometry = model_geometry(model)
    if geometry is None:
        from ..toy.world import WorldConfig

        cfg = WorldConfig()
        geometry = (cfg.frames, cfg.size, cfg.size)
        print(f"note: no model folder to take the frame count and size from; using the toy "
              f"world's ({cfg.frames} frames, {cfg.size}x{cfg.size})")
    return frames or geometry[0], tuple(size or geometry[1:])


def _write_video_pair(folder: Path, src: Path, video, fps, start: int, gap: int, frames: int,
                      size: tuple[int, int]) -> dict:
    """The pair of ``video`` (from the file or folder ``src``) starting at frame ``start`` in the
    set ``folder``: its true clip resampled to ``frames`` frames, centre-cropped and resized to
    ``size``; and its manifest entry."""
    stem = re.sub(r"[^\w.-]+", "_", src.stem if src.is_file() else src.name)
    idx = np.rint(np.linspace(start, start + gap, frames)).astype(int)
    clip = np.stack([np.asarray(PIL.ImageOps.fit(PIL.Image.fromarray(video[i]), size,
                                                 PIL.Image.LANCZOS)) for i in idx])
    entry = _write_pair(folder, f"{stem}-{start:05d}", clip)
    entry["source"] = {"video": str(src.resolve()), "first_frame": int(start),
                       "last_frame": int(start + gap), "frames": idx.tolist(), "fps": fps}
    return entry


def make_video_set(videos: str | Path, out: str | Path, *, gap: int = 25,
                   pairs_per_video: int = 1, frames: int | None = None,
                   size: tuple[int, int] | None = None, model=None,
                   overwrite: bool = False) -> tuple[Path, dict]:
    """A set from a folder of videos, as the paper made its DAVIS and Pexels pairs: keyframes
    ``gap`` frames apart, the true clip between them resampled to ``frames`` frames (nearest
    source frame at evenly spaced times), all centre-cropped and resized to ``size`` (W, H).
    ``frames`` and ``size`` default to the model's. Returns the folder and counts. The options'
    ranges and the machine's bounds: :mod:`.set_options`."""
    from tqdm.auto import tqdm

    VideoSetOptions(gap=gap, pairs_per_video=pairs_per_video, frames=frames,
                    size=None if size is None else tuple(size)).check()
    out = Path(out)
    if out.exists() and not overwrite:
        raise InbetweeningError(f"{out} already exists (pass --overwrite to replace it)")
    frames, (width, height) = _set_geometry(model, frames, size)
    check_video_work(frames, width, height)
    sources = _video_sources(Path(videos))
    counts = {"videos": len(sources), "unreadable": 0, "too_short": 0, "pairs": 0}
    entries = []
    with atomic_path(out, overwrite=overwrite, inputs=[videos], kind="set") as tmp:
        tmp.mkdir()
        for src in tqdm(sources, desc="videos"):
            try:
                video, fps = media.read_video(src)
            except InbetweeningError:
                counts["unreadable"] += 1
                continue
            starts = pair_starts(len(video), gap, pairs_per_video)
            if not starts:
                counts["too_short"] += 1
                continue
            entries += [_write_video_pair(tmp, src, video, fps, s, gap, frames, (width, height))
                        for s in starts]
        counts["pairs"] = len(entries)
        if not entries:
            raise InbetweeningError(
                f"{videos}: no usable video ({counts['unreadable']} unreadable, "
                f"{counts['too_short']} shorter than {gap + 1} frames)")
        _write_manifest(tmp, {
            "format": SET_FORMAT, "kind": "videos", "frames": frames, "width": width,
            "height": height,
            "description": f"keyframe pairs {gap} frames apart from the videos of {videos}, the "
                           f"true clip between them resampled to {frames} frames, centre-cropped "
                           f"and resized to {width}x{height}",
            "gap": gap, "pairs_per_video": pairs_per_video, "counts": counts, "pairs": entries})
    return out, counts
