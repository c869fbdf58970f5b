"""Backward-motion fine-tuning, the paper's Alg. 1: ``inbetween train``.

    inbetween train --model SVD_FOLDER --data CLIPS/ --output runs/backward
    torchrun --nproc_per_node 2 -m inbetweening.cli train --device cpu ...   # 2 processes

One optimizer step, for clips x (B, F, 3, H, W) in [-1, 1]:

1. z = VAE(x).mode() * scaling_factor (no grad; cached per clip), the CLIP embeddings of the
   first and last frames (cached), and their conditioning latents with noise augmentation.
2. ln(sigma) ~ N(p_mean, p_std^2), noise n. The forward branch is the clip, noised,
   z + sigma * n, conditioned on its FIRST frame (frozen: it only lends its attention); the
   backward branch is the same noisy video flipped in time, i.e. the reversed clip z.flip +
   sigma * n.flip, conditioned on the clip's LAST frame.
3. The UNet denoises the backward branch (EDM preconditioning of SVD's v-prediction); in every
   temporal self-attention layer it attends with the forward branch's map rotated by 180 degrees
   (variant ``rotation``; ``no-rotation`` uses its own q, k and no map).
4. loss = (1 + sigma^2) / sigma^2 * |D_backward - z.flip|^2, and AdamW on the backward weights
   only (``backward.init_backward_weights``: to_v / to_out.0 of those layers, fp32).

Step 3 can be run three ways, equal up to float rounding (``dual_pass``):

``split``      (default) a no-grad forward call that keeps each layer's Q, K flipped in time,
               then the backward call with autograd, attending with sdpa on them;
``fused``      one UNet call over [forward rows, backward rows], the sampler's fused machinery
               (forward Q, K detached); its forward rows ride through autograd for nothing;
``reference``  the paper literally: a forward call recording explicit softmax maps and a
               backward call using them rotated (the oracle the tests hold the others to).

``benchmarks/training.py`` times the three. On the toy model's shapes (CPU, fp32) ``split`` and
``reference`` tie (the maps are tiny at 8 frames) and ``fused`` is 1.14-1.38x slower (1 to 4
clips); for ``no-rotation``, ``split`` skips the forward call and is 1.5x faster than both.
Randomness (clip order, sigma, noise) is a pure function of the seed and a sample's position in
the run, so a resumed run repeats an uninterrupted one, and N processes at batch B, one process
at batch N*B and one at batch B with N-step accumulation all see the same samples.
"""

from __future__ import annotations

import contextlib
import csv
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import attention, backward, conditioning
from .utils import InbetweeningError, atomic_torch_save

# -- config (the published recipe where it has one; see ../shared/notes/published-recipe.md) ----


@dataclass
class TrainConfig:
    data: str | None = None  # folder of videos / frame folders (see inbetweening.data)
    output: str = "runs/backward"  # gets backward.safetensors, checkpoints/, log.csv, samples/
    model: str | None = None  # diffusers SVD folder or hub id; None: the bundled toy model
    variant: str = "rotation"  # or "no-rotation" (the paper's "w/o RA": q, k, v, o, no maps)
    # data
    frames: int | None = None  # frames per clip; None: the model's num_frames
    stride: int = 2  # take every stride-th frame
    size: tuple[int, int] | None = None  # (width, height); None: the model's
    # optimisation
    steps: int = 15_000  # optimizer steps
    batch_size: int = 1  # clips per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup: int = 0  # linear lr warm-up steps (0: constant lr, as published)
    # noise and conditioning
    p_mean: float = 0.7  # ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.6
    sigma_set: tuple[float, ...] | None = None  # draw sigma from these values instead
    fps: int = 7  # the UNet sees fps - 1 = 6
    motion_bucket_id: int = 127
    noise_aug: float = 0.02
    cond_aug: str = "latent"  # conditioning noise on the latent (published training) or "pixel"
    # machinery
    dual_pass: str = "split"  # split | fused | reference (see the module docstring)
    mixed_precision: str | None = None  # no | fp16 | bf16; None: accelerate's setting
    gradient_checkpointing: bool = False
    cache_latents: bool = True  # encode each clip once (VAE, CLIP) and keep it
    device: str | None = None  # cpu | cuda; None: cuda if available
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int | None = None  # validation video every N steps; None: checkpoint_every
    sample_steps: int | None = None  # its denoising steps; None: the model's recommendation
    save_dtype: str = "fp32"
    resume: str | None = None  # "latest" or a checkpoint file
    overwrite: bool = False
    stop_after: int | None = None  # end this run after this step (resume it later)
    progress: bool = True

    def __post_init__(self):
        if self.sample_every is None:
            self.sample_every = self.checkpoint_every


DUAL_PASSES = ("split", "fused", "reference")
WEIGHTS_FILE = "backward.safetensors"
LOG_FILE = "log.csv"

# -- the loss ---------------------------------------------------------------------------------


def unet_input(noisy: torch.Tensor, sigma: torch.Tensor, cond_latent: torch.Tensor):
    """The UNet's input (c_in * x with the conditioning latent on channels) and its timesteps.
    noisy: (N, F, C, h, w); sigma: (N,); cond_latent: (N, C, h, w)."""
    c_in, _, _, c_noise = conditioning.edm_scalings(sigma.view(-1, 1, 1, 1, 1))
    f = noisy.shape[1]
    inp = torch.cat([c_in * noisy, cond_latent.unsqueeze(1).expand(-1, f, -1, -1, -1)], dim=2)
    return inp, c_noise.flatten()


class BackwardObjective(torch.nn.Module):
    """The loss of one batch. Its parameters are exactly the trainable backward weights (what
    accelerate moves and DDP synchronises); the frozen UNet is held, not registered."""

    def __init__(self, unet, weights: dict[str, torch.nn.Parameter], plans, added_time_ids,
                 dual_pass: str = "split"):
        super().__init__()
        if dual_pass not in DUAL_PASSES:
            raise InbetweeningError(f"dual_pass must be one of {', '.join(DUAL_PASSES)}")
        self.names = list(weights)
        self.weights = torch.nn.ParameterList(weights.values())
        self.__dict__["unet"] = unet  # not a submodule: DDP must not sync 1.5 B frozen weights
        self.plans, self.dual_pass = plans, dual_pass
        self.rotate = any(p.rotate for p in plans.values())
        self.register_buffer("ids", added_time_ids, persistent=False)

    def _unet(self, noisy, sigma, embedding, cond_latent):
        inp, t = unet_input(noisy, sigma, cond_latent)
        dtype = self.unet.dtype
        ids = self.ids.expand(noisy.shape[0], -1)
        return self.unet(inp.to(dtype), t.to(dtype), embedding.to(dtype), ids.to(dtype),
                         return_dict=False)[0].float()

    def forward(self, batch: dict[str, torch.Tensor]):
        """batch: ``z`` (B, F, C, h, w) clean latents, ``sigma`` (B,), ``noise`` like z,
        ``emb_first``/``emb_last`` (B, 1, D), ``lat_first``/``lat_last`` (B, C, h, w).
        Returns (mean loss, per-sample losses)."""
        z, sigma = batch["z"], batch["sigma"]
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = z + s * batch["noise"]  # forward branch
        noisy_b, target = noisy.flip(1), z.flip(1)  # backward branch: the same video, reversed
        fwd = (noisy, sigma, batch["emb_first"], batch["lat_first"])
        bwd = (noisy_b, sigma, batch["emb_last"], batch["lat_last"])
        if self.dual_pass == "fused":
            with attention.phase(self.unet, "fused", self.plans):
                v = self._unet(*(torch.cat([a, b]) for a, b in zip(fwd, bwd)))
            v_b = v[z.shape[0]:]
        else:
            first, second = ("record", "inject") if self.dual_pass == "reference" else (
                "record_qk", "inject_qk")
            if self.rotate or self.dual_pass == "reference":
                with torch.no_grad(), attention.phase(self.unet, first, self.plans):
                    self._unet(*fwd)
            # diffusers checkpoints only the resnets of SVD's blocks, so the phase need not
            # outlive this call for gradient checkpointing (a test holds it to that).
            with attention.phase(self.unet, second, self.plans):
                v_b = self._unet(*bwd)
        _, c_skip, c_out, _ = conditioning.edm_scalings(s)
        denoised = c_skip * noisy_b + c_out * v_b
        per_sample = ((denoised - target) ** 2).mean(dim=(1, 2, 3, 4))
        per_sample = per_sample * conditioning.loss_weight(sigma)
        return per_sample.mean(), per_sample.detach()


# -- data: clips -> cached latents -> random batches ---------------------------------------------


def _generator(seed: int, *keys: int) -> torch.Generator:
    """A generator that is a pure function of (seed, keys): the same in every process and run."""
    value = seed
    for k in keys:
        value = (value * 1_000_003 + k * 7_919 + 12_345) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


@dataclass
class Encoded:
    """What a clip contributes to a batch, computed once."""

    z: torch.Tensor  # (F, C, h, w) latents * scaling_factor
    emb: torch.Tensor  # (2, 1, D) CLIP embeddings of the first and last frame
    ends: torch.Tensor | None  # (2, 3, H, W) first and last frame, for pixel-space augmentation


class ClipEncoder:
    """Encodes clips for training (no grad), with a per-clip cache."""

    def __init__(self, pipe, dataset, cache: bool, keep_ends: bool, chunk: int = 8):
        self.pipe, self.dataset, self.chunk = pipe, dataset, chunk
        self.cache: dict[int, Encoded] | None = {} if cache else None
        self.keep_ends = keep_ends

    @torch.no_grad()
    def __call__(self, index: int) -> Encoded:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        pipe = self.pipe
        device = pipe.unet.device
        x = self.dataset[index].to(device)  # (F, 3, H, W)
        vae = pipe.vae
        z = torch.cat([vae.encode(x[a:a + self.chunk].to(vae.dtype)).latent_dist.mode()
                       for a in range(0, len(x), self.chunk)]).float()
        z = z * vae.config.scaling_factor
        ends = x[[0, -1]]
        emb = conditioning.clip_embedding(pipe.image_encoder, pipe.feature_extractor, ends)
        out = Encoded(z.cpu(), emb.float().cpu(), ends.cpu() if self.keep_ends else None)
        if self.cache is not None:
            self.cache[index] = out
        return out


class Batches:
    """Micro-batch ``m`` of the whole run, for this process. The global stream of samples is a
    pure function of the seed: position p is clip ``perm(epoch)[p % n]`` with its own sigma and
    noise, so any split into processes, micro-steps and batches sees the same samples."""

    def __init__(self, cfg: TrainConfig, dataset, encoder: ClipEncoder, pipe, rank: int,
                 world: int):
        self.cfg, self.dataset, self.encoder, self.pipe = cfg, dataset, encoder, pipe
        self.rank, self.world = rank, world
        self.global_batch = cfg.batch_size * world
        self.offset = 0  # position of micro-step 0 (a resumed run continues where it stopped)
        self._perms: dict[int, torch.Tensor] = {}

    def clip_index(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=_generator(self.cfg.seed, 1, epoch))}
        return int(self._perms[epoch][position % n])

    def position(self, micro_step: int) -> int:
        """Samples consumed (all processes) before micro-step ``micro_step``: the data position."""
        return self.offset + micro_step * self.global_batch

    def _sample(self, position: int) -> dict[str, torch.Tensor]:
        """One training sample (on the CPU): a clip, its noise level, noise and conditioning."""
        cfg, vae = self.cfg, self.pipe.vae
        item = self.encoder(self.clip_index(position))
        g = _generator(cfg.seed, 2, position)
        if cfg.sigma_set:
            sigma = torch.tensor([cfg.sigma_set[int(torch.randint(len(cfg.sigma_set), (1,),
                                                                  generator=g))]])
        else:
            sigma = conditioning.sample_sigmas(1, cfg.p_mean, cfg.p_std, g)
        noise = torch.randn(item.z.shape, generator=g)
        if cfg.cond_aug == "latent":  # published training: the frame's latent mode + noise
            aug = torch.randn((2,) + item.z.shape[1:], generator=g)
            lat = item.z[[0, -1]] / vae.config.scaling_factor + cfg.noise_aug * aug
        else:  # as SVD samples: noise on the pixels, then the VAE
            aug = torch.randn(item.ends.shape, generator=g)
            lat = conditioning.image_latent(vae, item.ends.to(vae.device), cfg.noise_aug,
                                            aug.to(vae.device)).float().cpu()
        return dict(z=item.z, sigma=sigma[0], noise=noise, emb_first=item.emb[0],
                    emb_last=item.emb[1], lat_first=lat[0], lat_last=lat[1])

    @torch.no_grad()
    def __call__(self, micro_step: int) -> dict[str, torch.Tensor]:
        b = self.cfg.batch_size
        start = self.position(micro_step) + self.rank * b
        samples = [self._sample(p) for p in range(start, start + b)]
        device = self.pipe.unet.device
        return {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}


# -- bookkeeping: checkpoints, log, samples -------------------------------------------------------


def checkpoints(out: Path) -> list[Path]:
    found = (out / "checkpoints").glob("step-*.pt")
    return sorted(found, key=lambda p: int(p.stem.split("-")[1]))


def _bucket_names() -> list[str]:
    """The sigma buckets of conditioning.log_sigma_bucket, in order."""
    names = []
    for s in np.logspace(-3, 3, 200):
        b = conditioning.log_sigma_bucket(float(s))
        if b not in names:
            names.append(b)
    return names


class CsvLog:
    """log.csv: one row per optimizer step, with the loss per sigma bucket."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields = (["step", "loss", "grad_norm", "lr", "seconds"]
                       + [f"loss_sigma{b}" for b in _bucket_names()])
        rows = []
        if path.exists() and resume_step > 0:  # drop what a killed run logged after its checkpoint
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, step: int, losses: torch.Tensor, sigmas: torch.Tensor, grad_norm: float,
              lr: float, seconds: float) -> None:
        row = {"step": step, "loss": f"{losses.mean().item():.6g}", "grad_norm": f"{grad_norm:.4g}",
               "lr": f"{lr:.3g}", "seconds": f"{seconds:.2f}"}
        buckets: dict[str, list[float]] = {}
        for s, l in zip(sigmas.tolist(), losses.tolist()):
            buckets.setdefault(conditioning.log_sigma_bucket(s), []).append(l)
        for b, ls in buckets.items():
            row[f"loss_sigma{b}"] = f"{sum(ls) / len(ls):.6g}"
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def write_sample(pipe, dataset, cfg: TrainConfig, path: Path) -> Path:
    """The validation video: the first clip's end frames inbetweened with method gi, beside the
    true clip."""
    from . import media

    clip = dataset[0]  # (F, 3, H, W) in [-1, 1]
    frames = ((clip + 1) / 2).clamp(0, 1)
    kw = {**pipe.defaults, "height": clip.shape[-2], "width": clip.shape[-1],
          "num_frames": clip.shape[0], "method": "gi", "fps": cfg.fps,
          "motion_bucket_id": cfg.motion_bucket_id, "noise_aug_strength": cfg.noise_aug,
          "output_type": "np", "generator": torch.Generator().manual_seed(cfg.seed)}
    if cfg.sample_steps:
        kw["num_inference_steps"] = cfg.sample_steps
    kw.setdefault("num_inference_steps", 25)
    disabled = getattr(pipe, "_progress_bar_config", {}).get("disable", False)
    pipe.set_progress_bar_config(disable=True)
    video = pipe(frames[0], frames[-1], **kw).frames[0]  # (F, H, W, 3) in [0, 1]
    pipe.set_progress_bar_config(disable=disabled)
    truth = frames.permute(0, 2, 3, 1).numpy()
    gap = np.full((video.shape[0], video.shape[1], 4, 3), 0.1, dtype=np.float32)
    both = np.concatenate([truth, gap, video.astype(np.float32)], axis=2)
    return media.write_video(both, path, fps=cfg.fps, overwrite=True)


# -- loading ---------------------------------------------------------------------------------------


def load_base(cfg: TrainConfig, device: torch.device, dtype: torch.dtype):
    """The base SVD model to fine-tune, as an InbetweenPipeline (frozen, weights in ``dtype``,
    the VAE in fp32)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from .loading import load_pipeline, resolve_model

    source = resolve_model(cfg.model)
    if source is None:
        raise InbetweeningError("no --model given and no bundled toy model in this install; "
                                "pass --model with a diffusers SVD folder")
    pipe = load_pipeline(source, None, device, dtype, quiet=True, allow_random=False)
    if not isinstance(pipe.unet, UNetSpatioTemporalConditionModel):
        raise InbetweeningError(f"{source}: the UNet is a {type(pipe.unet).__name__}, not an SVD "
                                "UNetSpatioTemporalConditionModel")
    pipe.vae.to(torch.float32)
    return pipe


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def check_config(cfg: TrainConfig) -> None:
    if cfg.data is None:
        raise InbetweeningError("give the training clips with --data DIR")
    if not Path(cfg.data).exists():
        raise InbetweeningError(f"data folder not found: {cfg.data}")
    backward._check_variant(cfg.variant)
    if cfg.dual_pass not in DUAL_PASSES:
        raise InbetweeningError(f"--dual-pass must be one of {', '.join(DUAL_PASSES)}")
    if cfg.cond_aug not in ("latent", "pixel"):
        raise InbetweeningError("--cond-aug must be 'latent' or 'pixel'")
    if cfg.mixed_precision not in (None, "no", "fp16", "bf16"):
        raise InbetweeningError("--mixed-precision must be no, fp16 or bf16")
    if cfg.save_dtype not in ("fp32", "fp16", "bf16"):
        raise InbetweeningError("--save-dtype must be fp32, fp16 or bf16")
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise InbetweeningError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.lr <= 0 or cfg.p_std < 0 or (cfg.sigma_set and min(cfg.sigma_set) <= 0):
        raise InbetweeningError("--lr and every sigma must be positive, --p-std not negative")


def _start(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from, or None; refuses to clobber an earlier run."""
    found = checkpoints(out)
    if cfg.resume not in (None, "", "latest"):
        path = Path(cfg.resume)
        if not path.is_file():
            raise InbetweeningError(f"checkpoint not found: {path}")
        return path
    if cfg.resume == "latest":
        if not found:
            print(f"note: no checkpoint in {out / 'checkpoints'}; starting from step 0")
        return found[-1] if found else None
    if (found or (out / WEIGHTS_FILE).exists()) and not cfg.overwrite:
        raise InbetweeningError(f"{out} holds an earlier run; pass --resume to continue it or "
                                "--overwrite to start again")
    return None


def _clear(out: Path) -> None:
    """What --overwrite replaces: this command's own files in OUTPUT, nothing else."""
    for p in checkpoints(out):
        p.unlink()
    for name in (WEIGHTS_FILE, LOG_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "samples", ignore_errors=True)


# -- the loop --------------------------------------------------------------------------------------


def train(cfg: TrainConfig, pipe=None) -> Path:
    """Fine-tune backward weights; returns the path of ``OUTPUT/backward.safetensors`` (or of the
    last checkpoint, when ``stop_after`` ends the run early).

    ``pipe``: an already loaded InbetweenPipeline to train on (its UNet is left unchanged; the
    backward weights are set on it); default: load ``cfg.model``.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    check_config(cfg)
    try:
        accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)
    except ValueError as e:  # an earlier Accelerator in this process fixed another precision
        if "already been initialized" not in str(e):
            raise
        AcceleratorState._reset_state()
        accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)
    try:
        return _train(cfg, accelerator, pipe)
    finally:
        if accelerator.num_processes == 1:  # let the next train() in this process choose again
            AcceleratorState._reset_state()


def _train(cfg: TrainConfig, accelerator, pipe) -> Path:
    from .data import ClipDataset
    from .loading import parse_dtype
    from .methods import layer_plans

    main = accelerator.is_main_process
    say = accelerator.print
    out = Path(cfg.output)
    resume_from = _start(cfg, out)
    if main and cfg.overwrite and resume_from is None:
        _clear(out)
    accelerator.wait_for_everyone()

    # Model: frozen base, trainable backward weights (fp32) on the temporal attention processors.
    mp = accelerator.mixed_precision
    if cfg.model:
        base_name = str(cfg.model)
    elif pipe is None:
        base_name = "inbetweening-toy"  # the bundled toy model
    else:
        base_name = getattr(pipe, "name_or_path", None) or "unknown"
    if pipe is None:
        pipe = load_base(cfg, accelerator.device, _weight_dtype(mp))
    for part in (pipe.unet, pipe.vae, pipe.image_encoder):
        part.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    weights = backward.init_backward_weights(pipe.unet, cfg.variant, torch.float32)
    plans = layer_plans("gi", list(attention.temporal_attention_layers(pipe.unet)), cfg.variant)
    ids = conditioning.added_time_ids(cfg.fps, cfg.motion_bucket_id, cfg.noise_aug, 1,
                                      device=accelerator.device)

    # Data.
    default_w, default_h = pipe.default_size()
    size = cfg.size or (default_w, default_h)
    frames = cfg.frames or pipe.unet.config.num_frames
    dataset = ClipDataset(cfg.data, frames, size, cfg.stride)
    encoder = ClipEncoder(pipe, dataset, cfg.cache_latents, keep_ends=cfg.cond_aug == "pixel")
    batches = Batches(cfg, dataset, encoder, pipe, accelerator.process_index,
                      accelerator.num_processes)

    objective = BackwardObjective(pipe.unet, weights, plans, ids, cfg.dual_pass)
    params = list(weights.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
    model, optimizer = accelerator.prepare(objective, optimizer)

    step, elapsed = 0, 0.0
    if resume_from is not None:
        state = torch.load(resume_from, map_location="cpu", weights_only=True)
        if list(state["weights"]) != objective.names:
            raise InbetweeningError(f"{resume_from} holds weights of another model or variant")
        with torch.no_grad():
            for p, t in zip(params, state["weights"].values()):
                p.copy_(t)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, elapsed = state["step"], state["elapsed"]
        batches.offset = state["data"]["position"] - batches.position(step * cfg.grad_accum)
        if state["data"]["clips"] != len(dataset):
            say(f"note: the data set had {state['data']['clips']} clips at the checkpoint and "
                f"has {len(dataset)} now; the clip order differs from an uninterrupted run")
        say(f"resuming from {resume_from} (step {step})")

    accum = cfg.grad_accum
    say(f"data: {dataset.summary()}")
    say(f"training {cfg.variant} backward weights ({sum(p.numel() for p in params):,} "
        f"parameters) of {base_name} on {accelerator.num_processes} "
        f"process(es), {accelerator.device}, batch {cfg.batch_size} x {accelerator.num_processes} "
        f"processes x {accum} accumulation = {batches.global_batch * accum} clips per step, "
        f"{size[0]}x{size[1]}, {frames} frames, mixed precision {mp}, dual pass {cfg.dual_pass}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    log = CsvLog(out / LOG_FILE, step) if main else None
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not (main and cfg.progress),
               dynamic_ncols=True)
    while step < end:
        t0 = time.time()
        losses, sigmas = [], []
        for micro in range(accum):
            batch = batches(step * accum + micro)
            sync = micro == accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss, per_sample = model(batch)
                accelerator.backward(loss / accum)
            losses.append(per_sample)
            sigmas.append(batch["sigma"])
        grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed += time.time() - t0
        all_losses = accelerator.gather(torch.cat(losses)).float().cpu()
        all_sigmas = accelerator.gather(torch.cat(sigmas)).float().cpu()
        if main:
            log.write(step, all_losses, all_sigmas, float(grad_norm), scheduler.get_last_lr()[0],
                      elapsed)
            bar.update(1)
            bar.set_postfix(loss=f"{all_losses.mean().item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == end:
            if main:
                _save_checkpoint(out, step, elapsed, objective, optimizer, scheduler, batches,
                                 cfg)
            accelerator.wait_for_everyone()
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
            if main:
                sample = write_sample(pipe, dataset, cfg, out / "samples" / f"step-{step:07d}.mp4")
                bar.write(f"step {step}: sample {sample}")
            accelerator.wait_for_everyone()
    bar.close()

    # One consistent weights file, written by the main process only.
    digest = torch.stack([p.detach().double().sum() + p.detach().double().abs().sum()
                          for p in params]).unsqueeze(0)
    digests = accelerator.gather(digest.to(accelerator.device))
    if not torch.equal(digests, digest.to(digests.device).expand_as(digests)):
        raise RuntimeError("the processes ended with different weights")
    if step < cfg.steps:
        say(f"stopped after step {step} of {cfg.steps}; continue with --resume")
        return checkpoints(out)[-1] if checkpoints(out) else out
    path = out / WEIGHTS_FILE
    if main:
        meta = {"base_model": base_name, "num_frames": frames,
                "size": f"{size[0]}x{size[1]}", "steps": step, "variant": cfg.variant,
                "global_batch": batches.global_batch * accum, "lr": cfg.lr,
                "trained_by": "inbetween train"}
        backward.save_backward_weights(path, dict(zip(objective.names, params)), metadata=meta,
                                       dtype=parse_dtype(cfg.save_dtype, torch.device("cpu")))
        say(f"wrote {path} ({step} steps, {accelerator.num_processes} process(es) agreed on the "
            f"weights)")
    accelerator.wait_for_everyone()
    return path


def _save_checkpoint(out: Path, step: int, elapsed: float, objective, optimizer, scheduler,
                     batches: Batches, cfg: TrainConfig) -> None:
    position = batches.position(step * cfg.grad_accum)
    state = {
        "step": step,
        "elapsed": elapsed,
        "weights": {n: p.detach().cpu() for n, p in zip(objective.names, objective.weights)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "data": {"position": position, "epoch": position // len(batches.dataset),
                 "clips": len(batches.dataset), "global_batch": batches.global_batch},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    atomic_torch_save(state, out / "checkpoints" / f"step-{step:07d}.pt")
    for old in checkpoints(out)[:-cfg.keep_checkpoints]:
        old.unlink()


# -- command line ----------------------------------------------------------------------------------

EPILOG = """\
Several processes (data parallel; --batch-size is per process):
  on the CPU:   torchrun --nproc_per_node 2 -m inbetweening.cli train --device cpu ARGS...
           or:  accelerate launch --multi_gpu --num_processes 2 -m inbetweening.cli train \\
                  --device cpu ARGS...
                (accelerate's --cpu flag alone starts ONE process unless MPI is set up)
  on N GPUs:    accelerate launch --multi_gpu --num_processes N -m inbetweening.cli train ARGS...
Only the main process writes files. Published recipe: 14-frame SVD img2vid, --frames 14
--stride 2 --size 1024x576, ~15k steps at batch 4 on 4 GPUs, --mixed-precision fp16.
"""


def _run(args) -> None:
    from .loading import parse_size

    sigma_set = None
    if args.sigma_set:
        try:
            sigma_set = tuple(float(v) for v in args.sigma_set.split(","))
        except ValueError:
            raise InbetweeningError(f"--sigma-set takes numbers like 0.5,1,2, not "
                                    f"{args.sigma_set!r}") from None
    cfg = TrainConfig(
        data=args.data, output=args.output, model=args.model, variant=args.variant,
        frames=args.frames, stride=args.stride, size=parse_size(args.size), steps=args.steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup=args.warmup,
        p_mean=args.p_mean, p_std=args.p_std, sigma_set=sigma_set, fps=args.fps,
        motion_bucket_id=args.motion_bucket_id, noise_aug=args.noise_aug, cond_aug=args.cond_aug,
        dual_pass="reference" if args.reference else args.dual_pass,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        cache_latents=not args.no_cache, device=args.device, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        sample_every=args.sample_every, sample_steps=args.sample_steps,
        save_dtype=args.save_dtype, resume=args.resume, overwrite=args.overwrite,
        stop_after=args.stop_after, progress=not args.no_progress)
    train(cfg)


def add_command(sub) -> None:
    import argparse

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="fine-tune backward weights on your clips (the paper's Alg. 1)",
        description="Backward-motion fine-tuning: train the backward weights of a base SVD model "
                    "on a folder of videos (mp4/webm/gif/mov) or frame folders. Writes "
                    "OUTPUT/backward.safetensors for `inbetween interpolate --backward`, "
                    "checkpoints, log.csv and validation samples.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of videos or frame folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="base: diffusers SVD folder or hub id (default: the bundled toy model)")
    p.add_argument("--variant", default=d.variant, choices=list(backward.VARIANTS),
                   help="rotation (the paper) or no-rotation (its 'w/o RA' ablation: q, k, v, o "
                        "trained, no maps)")
    g = p.add_argument_group("data")
    g.add_argument("--frames", type=int, default=None,
                   help="frames per clip (default: the model's)")
    g.add_argument("--stride", type=int, default=d.stride, help=f"default {d.stride}")
    g.add_argument("--size", default=None, help="WxH, multiples of 64 (default: the model's)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps ({d.steps})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="clips per process per micro-step")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="micro-steps per optimizer step")
    g.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate ({d.lr:g})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("noise and conditioning")
    g.add_argument("--p-mean", type=float, default=d.p_mean, help="ln(sigma) mean")
    g.add_argument("--p-std", type=float, default=d.p_std, help="ln(sigma) std")
    g.add_argument("--sigma-set", default=None, help="draw sigma from these values (e.g. 0.5,1,2)")
    g.add_argument("--fps", type=int, default=d.fps)
    g.add_argument("--motion-bucket-id", type=int, default=d.motion_bucket_id)
    g.add_argument("--noise-aug", type=float, default=d.noise_aug)
    g.add_argument("--cond-aug", default=d.cond_aug, choices=["latent", "pixel"],
                   help="add the conditioning noise to the latent (published training) or to "
                        "the pixels before the VAE (as SVD samples)")
    g = p.add_argument_group("machinery")
    g.add_argument("--dual-pass", default=d.dual_pass, choices=list(DUAL_PASSES),
                   help="split: no-grad forward call + backward call on its flipped Q, K; "
                        "fused: one UNet call for both; reference: explicit maps")
    g.add_argument("--reference", action="store_true",
                   help="the paper's literal two-call version (= --dual-pass reference)")
    g.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                   help="frozen weights and compute in fp16/bf16, backward weights in fp32 "
                        "(default: accelerate's setting, else no)")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--no-cache", action="store_true",
                   help="encode clips at every step instead of once")
    g.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda if available")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"steps between checkpoints (default {d.checkpoint_every})")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help=f"checkpoints kept (default {d.keep_checkpoints})")
    g.add_argument("--sample-every", type=int, default=None,
                   help="validation video every N steps (default: --checkpoint-every; 0: never)")
    g.add_argument("--sample-steps", type=int, default=None,
                   help="denoising steps of the validation video")
    g.add_argument("--save-dtype", default=d.save_dtype, choices=["fp32", "fp16", "bf16"],
                   help="dtype of backward.safetensors (default fp32)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in OUTPUT, or from this one")
    g.add_argument("--overwrite", action="store_true", help="start again over an earlier run")
    g.add_argument("--stop-after", type=int, default=None,
                   help="end this run after this step (checkpointed); continue with --resume")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
