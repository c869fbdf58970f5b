r"""Training the toy models (:mod:`inbetweening.toy`) from scratch: fit the autoencoder, then
train the forward image-to-video UNet (with its CLIP image encoder), then the backward weights with
the product's own fine-tuning (:func:`inbetweening.training.train`). The command is
:mod:`inbetweening.commands.toy_train`.

Each stage checkpoints every ``checkpoint_every`` steps and resumes from its last checkpoint
when run again; a finished stage is skipped. Every random draw is addressed by (seed, step), so a
resumed run sees exactly the clips and noise an uninterrupted one would. The autoencoder sees fresh
clips at every step; the forward stage cycles through a pool of clips encoded once.
:func:`bundle` copies the result (fp16) into the package as a bundled model.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import backbones
from .. import conditioning as cond
from ..backbones import Rows
from ..backward import WEIGHTS_FILENAME, load_backward_weights_file, save_backward_weights
from ..training import (
    TrainConfig, append_csv_row, checkpoint_files, prune_checkpoints, train,
)
from ..utils import atomic_path, atomic_torch_save
from . import models
from .autoencoder import PatchAutoencoder
from .world import WorldConfig, make_clips

TRAIN_SEED = 0  # the training stream of the toy world; held-out seeds are >= world.HELD_OUT_SEED


@dataclass
class AutoencoderConfig:
    clips: int = 500  # toy clips whose frames the patch components are fitted on
    frames_per_clip: int = 4


@dataclass
class ForwardConfig:
    steps: int = 12000
    batch: int = 8
    lr: float = 4e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.999
    p_mean: float = 0.5  # ln(sigma) ~ N(p_mean, p_std^2) for most samples ...
    p_std: float = 1.4
    p_uniform: float = 0.1  # ... and log-uniform over the sampler's whole range for the rest
    bf16: bool = True  # autocast the UNet and image encoder (fp32 weights, optimizer and loss)
    pool: int = 8000  # training clips, VAE-encoded once and cycled through in shuffled epochs
    cond_dropout: float = 0.1  # zero CLIP embedding and image latent together, for CFG
    noise_aug: float = 0.02
    fps: int = 7
    motion_bucket_id: int = 127
    checkpoint_every: int = 100


def fit_autoencoder(out: Path, cfg: AutoencoderConfig, world: WorldConfig,
                    init: Path | None = None) -> None:
    """The toy autoencoder: principal components of 8x8 patches of toy frames (see
    :mod:`inbetweening.toy.autoencoder` for why it is fitted rather than trained). With ``init``
    (a trained toy model folder) its autoencoder is taken as it is, since the UNet that starts
    from that folder learned that latent space."""
    if (out / "vae" / "config.json").exists():
        print("autoencoder: done already, skipping")
        return
    if init is not None:
        with atomic_path(out / "vae", kind="model") as tmp:
            PatchAutoencoder.from_pretrained(init / "vae").float().save_pretrained(tmp)
        _write_stage_report(out, "autoencoder", {"copied_from": str(init)})
        return
    t0 = time.time()
    clips = make_clips(TRAIN_SEED + 1, cfg.clips, world)
    step = max(1, world.frames // cfg.frames_per_clip)
    frames = (clips.video[:, ::step] * 2 - 1).flatten(0, 1)
    vae = models.vae()
    stats = vae.fit(frames)
    held = make_clips(TRAIN_SEED + 2, 16, world).video.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        rec = vae.decode(vae.encode(held).latent_dist.mode()).sample
    psnr = -10 * math.log10(F.mse_loss(rec, held).item() / 4)
    with atomic_path(out / "vae", kind="model") as tmp:
        vae.save_pretrained(tmp)
    print(f"autoencoder: {stats['variance_kept']:.1%} of the patch variance, {psnr:.1f} dB on "
          "other clips")
    _write_stage_report(out, "autoencoder", {**stats, "psnr_db": psnr, "frames": len(frames),
                                             "seconds": time.time() - t0,
                                             "config": asdict(cfg)})


def _write_stage_report(out: Path, name: str, info: dict) -> None:
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[name] = info
    report["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    path.write_text(json.dumps(report, indent=2))


def _sigmas(cfg: ForwardConfig, batch: int, g: torch.Generator) -> torch.Tensor:
    sig = cond.sample_sigmas(batch, cfg.p_mean, cfg.p_std, g)
    lo, hi = math.log(models.SVD_SCHEDULER_CONFIG["sigma_min"]), math.log(
        models.SVD_SCHEDULER_CONFIG["sigma_max"])
    uni = torch.exp(lo + (hi - lo) * torch.rand(batch, generator=g))
    pick = torch.rand(batch, generator=g) < cfg.p_uniform
    return torch.where(pick, uni, sig)


def latent_pool(out: Path, vae, world: WorldConfig, size: int, chunk: int = 250):
    """The forward stage's training clips: (latents (N, F, C, h, w) scaled by the VAE's factor,
    first frames (N, 3, H, W) in [-1, 1]). Rendering clips costs about half a UNet step per
    batch, so they are rendered and encoded once, in chunks saved as they are done (an
    interrupted run resumes)."""
    folder = out / "latent_pool"
    folder.mkdir(parents=True, exist_ok=True)
    sf = vae.config.scaling_factor
    latents, firsts = [], []
    for start in tqdm(range(0, size, chunk), desc="encoding clips", unit="chunk"):
        path = folder / f"{start:06d}-{min(size, start + chunk):06d}.pt"
        if not path.exists():
            parts_z, parts_x = [], []
            for a in range(start, min(size, start + chunk), 8):
                n = min(8, size - a, start + chunk - a)
                clips = make_clips(TRAIN_SEED, n, world, start=a)
                x = clips.video * 2 - 1
                with torch.no_grad():
                    z = vae.encode(x.flatten(0, 1)).latent_dist.mode() * sf
                parts_z.append(z.unflatten(0, x.shape[:2]))
                parts_x.append(x[:, 0])
            atomic_torch_save({"latents": torch.cat(parts_z), "first": torch.cat(parts_x)}, path)
        part = torch.load(path, weights_only=True)
        latents.append(part["latents"])
        firsts.append(part["first"])
    return torch.cat(latents), torch.cat(firsts)


def _pool_indices(step: int, batch: int, size: int) -> torch.Tensor:
    """Indices of the clips of ``step``: shuffled epochs over the pool, a pure function of the
    step (so a resumed run sees the same clips)."""
    perms: dict[int, torch.Tensor] = {}
    idx = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(k, size)
        if epoch not in perms:
            g = torch.Generator().manual_seed(3_000_000 + epoch)
            perms[epoch] = torch.randperm(size, generator=g)
        idx.append(int(perms[epoch][pos]))
    return torch.tensor(idx)


def _initial_models(init: Path | None, frames: int):
    """The forward stage's starting UNet and image encoder: fresh ones, or (fp32 copies of)
    those of a trained toy model folder."""
    if init is None:
        torch.manual_seed(1)
        return models.unet(frames), models.image_encoder()
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    return (UNetSpatioTemporalConditionModel.from_pretrained(init / "unet").float(),
            CLIPVisionModelWithProjection.from_pretrained(init / "image_encoder").float())


@dataclass
class _ForwardState:
    """The forward stage's models, optimizer and place in the run."""

    unet: torch.nn.Module
    encoder: torch.nn.Module
    ema_unet: torch.nn.Module
    ema_encoder: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0

    @property
    def params(self) -> list:
        return list(self.unet.parameters()) + list(self.encoder.parameters())

    def save(self, path: Path) -> None:
        atomic_torch_save({"unet": self.unet.state_dict(), "encoder": self.encoder.state_dict(),
                           "ema_unet": self.ema_unet.state_dict(),
                           "ema_encoder": self.ema_encoder.state_dict(),
                           "optimizer": self.opt.state_dict(), "step": self.step,
                           "elapsed": self.elapsed}, path)

    def load(self, path: Path, device) -> None:
        state = torch.load(path, weights_only=True, map_location=device)
        for name in ("unet", "encoder", "ema_unet", "ema_encoder"):
            getattr(self, name).load_state_dict(state[name])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]


def _forward_state(cfg: ForwardConfig, world: WorldConfig, device, init: Path | None):
    unet, encoder = (m.to(device) for m in _initial_models(init, world.frames))
    opt = torch.optim.AdamW(list(unet.parameters()) + list(encoder.parameters()), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    return _ForwardState(unet, encoder, copy.deepcopy(unet).requires_grad_(False),
                         copy.deepcopy(encoder).requires_grad_(False), opt)


def _forward_loss(st: _ForwardState, cfg: ForwardConfig, vae, extractor, z, first, ids,
                  g: torch.Generator, device):
    """The standard SVD objective on a batch of clips' latents z conditioned on their first
    frames: (mean loss, per-sample losses, sigmas)."""
    b = z.shape[0]
    with torch.no_grad():
        cond_latent = cond.image_latent(vae, first, cfg.noise_aug,
                                        torch.randn(first.shape, generator=g).to(device))
    keep = (torch.rand(b, generator=g) >= cfg.cond_dropout).float().to(device)
    sigma = _sigmas(cfg, b, g).to(device)
    noise = torch.randn(z.shape, generator=g).to(device)
    noisy = z + sigma.view(b, 1, 1, 1, 1) * noise
    backbone = backbones.for_model(st.unet)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
        emb = cond.clip_embedding(st.encoder, extractor, first) * keep.view(b, 1, 1)
        rows = Rows(emb, cond_latent * keep.view(b, 1, 1, 1), ids)
        denoised = backbone.denoise(st.unet, noisy, sigma, rows)
    per_sample = ((denoised - z) ** 2).mean(dim=(1, 2, 3, 4)) * cond.loss_weight(sigma)
    return per_sample.mean(), per_sample, sigma


def _forward_update(st: _ForwardState, cfg: ForwardConfig, loss) -> tuple[float, float]:
    """One optimizer step (warm-up, cosine decay to 10 %, EMA); returns (grad norm, lr)."""
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(st.params, 1.0)
    lr = cfg.lr * min(1.0, (st.step + 1) / cfg.warmup)
    lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * st.step / cfg.steps))
    for group in st.opt.param_groups:
        group["lr"] = lr
    st.opt.step()
    decay = min(cfg.ema, (1 + st.step) / (10 + st.step))
    with torch.no_grad():
        for m, e in ((st.unet, st.ema_unet), (st.encoder, st.ema_encoder)):
            for p, q in zip(m.parameters(), e.parameters()):
                q.lerp_(p, 1 - decay)
    return gnorm.item(), lr


def train_forward(out: Path, cfg: ForwardConfig, world: WorldConfig, device: str = "cpu",
                  init: Path | None = None) -> None:
    """The standard SVD objective: denoise a clip's latents conditioned on its FIRST frame.
    ``init``: a trained toy model folder to start from instead of random weights."""
    if (out / "unet" / "config.json").exists():
        print("forward: done already, skipping")
        return
    ckpt_dir = out / "checkpoints" / "forward"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    vae = PatchAutoencoder.from_pretrained(out / "vae").to(device).eval().requires_grad_(False)
    pool_z, pool_first = latent_pool(out, vae, world, cfg.pool)
    st, extractor = _forward_state(cfg, world, device, init), models.feature_extractor()
    if found := checkpoint_files(ckpt_dir):
        st.load(found[-1], device)
        print(f"forward: resuming at step {st.step}")
    st.unet.train()
    st.encoder.train()
    ids = cond.added_time_ids(cfg.fps, cfg.motion_bucket_id, cfg.noise_aug, 1, device=device)
    bar = tqdm(total=cfg.steps, initial=st.step, desc="forward")
    while st.step < cfg.steps:
        t0 = time.time()
        g = torch.Generator().manual_seed(2_000_000 + st.step)
        idx = _pool_indices(st.step, cfg.batch, len(pool_z))
        loss, per_sample, sigma = _forward_loss(st, cfg, vae, extractor, pool_z[idx].to(device),
                                                pool_first[idx].to(device), ids, g, device)
        gnorm, lr = _forward_update(st, cfg, loss)
        st.step += 1
        st.elapsed += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        append_csv_row(out / "forward_log.csv", {
            "step": st.step, "loss": f"{loss.item():.5f}", "grad_norm": f"{gnorm:.3f}",
            "lr": f"{lr:.2e}", "seconds": f"{st.elapsed:.1f}",
            "sigmas": " ".join(f"{s:.4g}:{v:.4g}" for s, v in zip(sigma.tolist(),
                                                               per_sample.tolist()))})
        if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
            st.save(ckpt_dir / f"step-{st.step}.pt")
            prune_checkpoints(ckpt_dir, keep=2)
    bar.close()
    _save_forward_model(out, st, cfg, world, init)


def _save_forward_model(out: Path, st: _ForwardState, cfg: ForwardConfig, world: WorldConfig,
                        init: Path | None) -> None:
    """The EMA models and the rest of a diffusers folder, and the stage's report."""
    for name, model in (("unet", st.ema_unet), ("image_encoder", st.ema_encoder)):
        with atomic_path(out / name, kind="model") as tmp:
            model.save_pretrained(tmp)
    models.feature_extractor().save_pretrained(out / "feature_extractor")
    models.scheduler().save_pretrained(out / "scheduler")
    _write_model_index(out)
    (out / "inbetweening.json").write_text(json.dumps(TOY_DEFAULTS, indent=2) + "\n")
    _write_stage_report(out, "forward", {"steps": st.step, "seconds": st.elapsed,
                                         "init": str(init) if init else None,
                                         "world": asdict(world), "config": asdict(cfg)})


@dataclass
class BackwardConfig:
    """The backward stage: the product's own ``inbetween train`` (Alg. 1) on toy clips. The
    published recipe except where the toy world differs: its noise levels are those the toy
    forward model was trained on, and a higher constant learning rate for a short run. The bundled
    model was trained with the conditioning noise on the latents and the clips' fixed windows
    (latents: the VAE's mode, cached), from before the published ones became the defaults: kept,
    so that this stage reproduces it."""

    clips: int = 400  # the paper used 100 videos
    steps: int = 1500
    batch: int = 4
    lr: float = 3e-4
    p_mean: float = ForwardConfig.p_mean
    p_std: float = ForwardConfig.p_std
    checkpoint_every: int = 100
    sample_every: int = 500
    cond_aug: str = "latent"  # inbetween train's --cond-aug (its default: pixel)
    windows: str = "fixed"  # its --clips (default: random)


def write_clips(folder: Path, count: int, world: WorldConfig, seed: int = TRAIN_SEED + 7) -> Path:
    """Toy training clips as folders of PNG frames (what ``inbetween train --data`` reads)."""
    import numpy as np
    import PIL.Image

    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc="writing clips", unit="clip"):
        clip_dir = folder / f"clip-{i:05d}"
        if clip_dir.is_dir():
            continue
        video = make_clips(seed, 1, world, start=i).video[0]
        with atomic_path(clip_dir, kind="data") as tmp:
            tmp.mkdir()
            for f, frame in enumerate(video):
                arr = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                PIL.Image.fromarray(arr).save(tmp / f"{f:03d}.png")
    (folder / "done").write_text(f"{count}\n")
    return folder


def train_backward(out: Path, cfg: BackwardConfig, world: WorldConfig, device: str = "cpu") -> None:
    """Fine-tune the toy model's backward weights with ``inbetweening.training.train``."""
    if (out / WEIGHTS_FILENAME).exists():
        print("backward: done already, skipping")
        return
    data = write_clips(out / "backward_data", cfg.clips, world)
    t0 = time.time()
    result = train(TrainConfig(
        data=str(data), output=str(out / "backward"), model=str(out), frames=world.frames,
        stride=1, size=(world.size, world.size), steps=cfg.steps, batch_size=cfg.batch,
        lr=cfg.lr, p_mean=cfg.p_mean, p_std=cfg.p_std, cond_aug=cfg.cond_aug, clips=cfg.windows,
        checkpoint_every=cfg.checkpoint_every, sample_every=cfg.sample_every, device=device,
        seed=0, resume="latest"))
    shutil.copyfile(result, out / WEIGHTS_FILENAME)
    _write_stage_report(out, "backward", {"steps": cfg.steps, "seconds": time.time() - t0,
                                          "note": "seconds of this run (a resumed run counts "
                                                  "only its own)", "config": asdict(cfg)})


def _write_model_index(out: Path) -> None:
    """A model_index.json like SVD's, so the folder loads as any diffusers SVD model does."""
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["inbetweening.toy.autoencoder", "PatchAutoencoder"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


# Recommended call arguments of the bundled toy model (written to its inbetweening.json; the CLI,
# demo, evaluation and app use them unless told otherwise).
TOY_DEFAULTS = {"num_inference_steps": 25, "reinject_count": 3, "fps": 7}

COMPONENTS = ("vae", "unet", "image_encoder", "feature_extractor", "scheduler")


def bundle(out: Path, dest: Path = models.BUNDLED_MODEL) -> Path:
    """Copy the trained toy model into the package: a diffusers folder in fp16, its backward
    weights, and its recommended call arguments. Replaces ``dest`` in one move."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    classes = {"vae": PatchAutoencoder, "unet": UNetSpatioTemporalConditionModel,
               "image_encoder": CLIPVisionModelWithProjection,
               "feature_extractor": CLIPImageProcessor, "scheduler": EulerDiscreteScheduler}
    missing = [c for c in COMPONENTS if not (out / c).is_dir()]
    if missing or not (out / WEIGHTS_FILENAME).is_file():
        raise SystemExit(f"cannot bundle {out}: missing {missing or [WEIGHTS_FILENAME]}")
    tensors, meta = load_backward_weights_file(out / WEIGHTS_FILENAME)
    with atomic_path(dest, kind="model") as tmp:  # replaces an earlier bundle in one move
        tmp.mkdir(parents=True)
        for name, cls in classes.items():
            part = cls.from_pretrained(out / name)
            if isinstance(part, torch.nn.Module):
                part = part.to(torch.float16)
            part.save_pretrained(tmp / name)
        _write_model_index(tmp)
        save_backward_weights(tmp / WEIGHTS_FILENAME, tensors, metadata=meta,
                              dtype=torch.float16)
        (tmp / "inbetweening.json").write_text(json.dumps(TOY_DEFAULTS, indent=2) + "\n")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"bundled {out} -> {dest} ({size / 2**20:.1f} MiB)")
    return dest


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_report(out: Path, docs: Path) -> list[Path]:
    """Loss curves of every stage as PNG under ``docs``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    written = []
    stages = [("forward", "forward_log.csv", "loss", "weighted denoising loss"),
              ("backward", "backward/log.csv", "loss", "weighted denoising loss")]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6))
    for ax, (name, log, key, label) in zip(axes, stages):
        rows = _read_log(out / log)
        rows = [r for r in rows if r.get(key) not in (None, "")]
        if not rows:
            ax.set_title(f"{name}: no log")
            continue
        steps = [int(float(r["step"])) for r in rows]
        vals = [float(r[key]) for r in rows]
        window = max(1, len(vals) // 50)
        ax.plot(steps, vals, alpha=0.25, lw=0.8)
        ax.plot(steps, _smooth(vals, window), lw=1.6)
        ax.set_title(f"{name} ({len(rows)} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = docs / "toy-training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


