"""What the rotation ablation (benchmarks/rotation.py) measures inside a backward model, besides
the videos: the held-out denoising loss of its checkpoints, and the motion its forward-only and
backward-only clean estimates imply on the same noisy latents (the mechanism the paper names:
with the rotated maps "the backward motion mirrors the forward motion").

Every draw here is fixed by the world, the pair and the sampling seed, never by the arm, so that
the arms are scored on identical inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from inbetweening import backward, conditioning
from inbetweening.methods import layer_plans
from inbetweening.train_config import TrainConfig
from inbetweening.training import BackwardObjective, Batches, checkpoints, read_checkpoint

LOSS_SIGMAS = (0.5, 1.0, 2.0, 5.0, 10.0)  # the held-out loss's noise levels
LOSS_SEED = 97  # its noise and conditioning noise (the same for every arm and checkpoint)
# The mechanism's noisy latents: pure noise at the schedule's first sigma, and the true clip's
# latent (unit variance) plus noise at these sigmas, from where the motion is still readable in
# the noisy latent to where it is nearly gone (the 25-step schedule spends its first half above
# sigma 15).
PROBE_SIGMAS = (2.5, 6.0, 15.0, 40.0)
MIDDLE_TOLERANCE = 4.0  # px: two middle-frame positions closer than this agree


# -- held-out denoising loss ----------------------------------------------------------------------

def loss_batches(pipe, clips: Path, frames: int, size: int, cfg: TrainConfig) -> dict:
    """The held-out batches, one per noise level of LOSS_SIGMAS: every clip of the folder
    ``clips`` once, conditioned and noised as ``cfg`` trains (fixed windows, its conditioning
    noise), with the same noise at every level."""
    from inbetweening.data import ClipDataset

    dataset = ClipDataset(str(clips), frames, (size, size), 1)
    out = {}
    for sigma in LOSS_SIGMAS:
        c = TrainConfig(data=str(clips), output="-", clips="fixed", cond_aug=cfg.cond_aug,
                        noise_aug=cfg.noise_aug, sigma_set=(sigma,), seed=LOSS_SEED,
                        batch_size=len(dataset), frames=frames, stride=1, size=(size, size))
        out[sigma] = Batches(c, dataset, pipe, 0, 1)(0)
    return out


@torch.no_grad()
def held_out_loss(pipe, variant: str, weights: dict[str, torch.Tensor], batches: dict,
                  cfg: TrainConfig) -> dict[str, float]:
    """The training objective (Alg. 1's weighted loss) of backward ``weights`` of ``variant`` on
    each held-out batch, by sigma."""
    params = {n: torch.nn.Parameter(t.float(), requires_grad=False) for n, t in weights.items()}
    backward.set_backward_weights(pipe.unet, params, variant)
    plans = layer_plans("gi", pipe.unet, variant)
    ids = conditioning.added_time_ids(cfg.fps, cfg.motion_bucket_id, cfg.noise_aug, 1)
    objective = BackwardObjective(pipe.unet, params, plans, ids, "split")
    return {f"{s:g}": float(objective(b)[1].mean()) for s, b in batches.items()}


def score_checkpoints(pipe, variant: str, run: Path, batches: dict, cfg: TrainConfig,
                      record: Path, every: int = 1) -> dict:
    """The held-out loss at step 0 (the base weights) and at every ``every``-th checkpoint of the
    training run ``run``, added to the JSON file ``record`` one checkpoint at a time (resumable).
    Returns {step: {sigma: loss}}."""
    from inbetweening.evaluation.results import write_json

    done = json.loads(record.read_text()) if record.is_file() else {}
    if "0" not in done:
        backward.clear_backward_weights(pipe.unet)
        start = backward.init_backward_weights(pipe.unet, variant, requires_grad=False)
        done["0"] = held_out_loss(pipe, variant, start, batches, cfg)
        write_json(record, done)
    files = checkpoints(run)
    for i, path in enumerate(files):
        if (i + 1) % every and i + 1 != len(files):
            continue
        step = int(path.stem.split("-")[1])
        if str(step) not in done:
            done[str(step)] = held_out_loss(pipe, variant, read_checkpoint(path)["weights"],
                                            batches, cfg)
            write_json(record, done)
    return {int(k): v for k, v in done.items()}


# -- the mechanism: what each direction alone implies ---------------------------------------------

def _as_uint8(frames: torch.Tensor) -> np.ndarray:
    """(1, F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8, as the pipeline's output."""
    x = ((frames[0].float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (x * 255).round().astype(np.uint8)


def probe_latents(pipe, pair, sigma_max: float, g: torch.Generator) -> dict[str, tuple]:
    """The noisy latents of one (pair, sampling seed): ``noise`` (pure noise at ``sigma_max``)
    and ``true+S`` (the true clip's latent plus S times the same noise), as (latent, sigma)."""
    from inbetweening.peers import clean_latent

    true = torch.from_numpy(pair.true_clip()).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = clean_latent(pipe.vae, true).unsqueeze(0)
    noise = torch.randn(z.shape, generator=g)
    out = {"noise": (noise * sigma_max, sigma_max)}
    out.update({f"true+{s:g}": (z + s * noise, s) for s in PROBE_SIGMAS})
    return out


@torch.no_grad()
def direction_videos(pipe, conds, ids, plans, x: torch.Tensor, sigma: float) -> list[np.ndarray]:
    """The decoded clean estimates of the forward direction alone (fusion weight 1: from the
    start frame) and of the backward direction alone (weight 0: from the end frame, flipped
    back), at the pipeline's symmetrised guidance."""
    from inbetweening.denoisers import InbetweenDenoiser, guidance_per_frame

    frames = x.shape[1]
    guidance = guidance_per_frame(frames, 1.0, 3.0, symmetric=True)
    videos = []
    for weight in (torch.ones(frames), torch.zeros(frames)):
        denoiser = InbetweenDenoiser(pipe.unet, conds[0], conds[1], ids, guidance, weight, plans)
        videos.append(_as_uint8(pipe.decode(denoiser(x, torch.tensor(sigma)), frames)))
    return videos


def _middle(track: np.ndarray) -> list[float]:
    """The position at the middle of the clip (between the two middle frames when even)."""
    f = len(track)
    return [float(v) for v in track[(f - 1) // 2:f // 2 + 1].mean(axis=0)]


def vehicle_motion(video: np.ndarray, sprites: list[dict], from_end: bool) -> list[dict]:
    """Per vehicle of ``video``: its speed along its heading (None where the tracker lost it)
    and its position at the middle of the clip, tracked from its true position in the first
    keyframe, or in the last one (``from_end``: the backward direction's own keyframe)."""
    from inbetweening.toy.tracker import speed_along_heading, track

    colors = [s["color"] for s in sprites]
    centers = np.array([s["centers"] for s in sprites], dtype=np.float64)
    if from_end:
        t = track(video[::-1], colors, centers[:, -1])
        positions, found = t.positions[:, ::-1], t.found[:, ::-1]
    else:
        t = track(video, colors, centers[:, 0])
        positions, found = t.positions, t.found
    return [{"speed": speed_along_heading(p, s["heading"], f), "middle": _middle(p)}
            for p, f, s in zip(positions, found, sprites)]


def probe_pair(pipe, pair, bset, seed: int, sigma_max: float) -> list[dict]:
    """The mechanism's records of one (pair, sampling seed): per probe latent and vehicle, the
    truth and what each direction alone implies."""
    from inbetweening.evaluation.scoring import pair_seed

    g = torch.Generator().manual_seed(pair_seed(seed, pair.id))
    start, end = pair.keyframes()
    _, conds = pipe.keyframe_conditions([start, end], bset.height, bset.width, "crop", 0.02, g,
                                        "cpu")
    ids = conditioning.added_time_ids(7, 127, 0.02, 1, dtype=conds[0].embedding.dtype)
    plans = layer_plans("gi", pipe.unet, backward.loaded_variant(pipe.unet))
    truth = [{"speed": s["speed"], "middle": _middle(np.array(s["centers"]))}
             for s in pair.sprites]
    records = []
    for probe, (x, sigma) in probe_latents(pipe, pair, sigma_max, g).items():
        fwd, bwd = direction_videos(pipe, conds, ids, plans, x, sigma)
        motions = zip(truth, vehicle_motion(fwd, pair.sprites, False),
                      vehicle_motion(bwd, pair.sprites, True))
        records += [{"pair": pair.id, "seed": seed, "probe": probe, "vehicle": i, "true": t,
                     "forward": f, "backward": b} for i, (t, f, b) in enumerate(motions)]
    return records


def probe_model(pipe, bset, seeds: list[int], record: Path) -> list[dict]:
    """The mechanism's records of the backward model loaded on ``pipe`` over every pair of
    ``bset`` and sampling seed, kept in the JSON file ``record`` (written once, when done)."""
    from inbetweening.evaluation.results import write_json

    if record.is_file():
        return json.loads(record.read_text())
    pipe.scheduler.set_timesteps(25)
    sigma_max = float(pipe.scheduler.sigmas[0])
    records = [r for pair in bset.pairs for s in seeds
               for r in probe_pair(pipe, pair, bset, s, sigma_max)]
    write_json(record, records)
    return records


def speed_class(speed: float | None, split: float) -> str | None:
    return None if speed is None else ("fast" if speed >= split else "slow")


def speed_kappa(a: list[dict], b: list[dict], split: float) -> float:
    """Cohen's kappa of two directions' speed classes over the vehicles where both were read:
    their agreement beyond what their rates of slow and fast alone would give (0: chance, 1:
    always the same class; NaN when either direction always gives the same class)."""
    both = [(speed_class(x["speed"], split), speed_class(y["speed"], split)) for x, y in zip(a, b)
            if x["speed"] is not None and y["speed"] is not None]
    if not both:
        return float("nan")
    observed = sum(x == y for x, y in both) / len(both)
    fa, fb = (sum(p[i] == "fast" for p in both) / len(both) for i in (0, 1))
    chance = fa * fb + (1 - fa) * (1 - fb)
    return (observed - chance) / (1 - chance) if chance < 1 else float("nan")


def agreement(records: list[dict], split: float) -> dict[str, float]:
    """Over vehicle records: how often the two directions agree (the same speed class; middle
    positions within MIDDLE_TOLERANCE) and the speed classes' agreement beyond chance (kappa),
    how often each direction makes a vehicle fast and agrees with the truth, their mean
    middle-frame distance, and how often a direction's speed could not be read (the tracker lost
    the vehicle). A direction whose speed could not be read agrees with nothing."""
    def close(a, b) -> bool:
        return float(np.hypot(a[0] - b[0], a[1] - b[1])) <= MIDDLE_TOLERANCE

    def same(a, b) -> bool:
        ca, cb = speed_class(a["speed"], split), speed_class(b["speed"], split)
        return ca is not None and ca == cb

    n = len(records)
    if not n:
        return {}
    f, b, t = ([r[k] for r in records] for k in ("forward", "backward", "true"))
    return {
        "speed_agree": sum(map(same, f, b)) / n,
        "speed_kappa": speed_kappa(f, b, split),
        "forward_fast": sum(speed_class(x["speed"], split) == "fast" for x in f) / n,
        "backward_fast": sum(speed_class(x["speed"], split) == "fast" for x in b) / n,
        "middle_agree": sum(close(x["middle"], y["middle"]) for x, y in zip(f, b)) / n,
        "middle_distance": float(np.mean([np.hypot(*np.subtract(x["middle"], y["middle"]))
                                          for x, y in zip(f, b)])),
        "forward_speed_true": sum(map(same, f, t)) / n,
        "backward_speed_true": sum(map(same, b, t)) / n,
        "forward_middle_true": sum(close(x["middle"], y["middle"]) for x, y in zip(f, t)) / n,
        "backward_middle_true": sum(close(x["middle"], y["middle"]) for x, y in zip(b, t)) / n,
        "unread": sum((x["speed"] is None) + (y["speed"] is None) for x, y in zip(f, b)) / (2 * n),
        "vehicles": n,
    }
