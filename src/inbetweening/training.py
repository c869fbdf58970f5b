"""Backward-motion fine-tuning, the paper's Alg. 1: what ``inbetween train`` runs (its command
line: :mod:`inbetweening.commands.train`; its options: :mod:`inbetweening.train_config`).

    inbetween train --model SVD_FOLDER --data CLIPS/ --output runs/backward
    torchrun --nproc_per_node 2 -m inbetweening.cli train --device cpu ...   # 2 processes

One optimizer step, for clips x (B, F, 3, H, W) in [-1, 1]:

1. The clips: by default (``--clips random``, as published) each sample is a random window of a
   video, and z = VAE(x).latent_dist.sample() * scaling_factor, a fresh sample every step (no
   grad); ``--clips fixed`` cycles through the videos' non-overlapping windows with z the VAE's
   mode, encoded once and cached (faster on a small set). The CLIP embeddings of the first and
   last frames (clean), and their conditioning latents with noise augmentation: by default
   (``--cond-aug pixel``, as published and as SVD samples) one noise draw, times ``noise_aug``,
   added to both frames' pixels, then the VAE's mode; ``latent`` adds a draw per frame to the
   frames' latent modes instead.
2. ln(sigma) ~ N(p_mean, p_std^2), noise n. The forward branch is the clip, noised,
   z + sigma * n, conditioned on its FIRST frame (frozen: it only lends its attention); the
   backward branch is the same noisy video flipped in time, i.e. the reversed clip z.flip +
   sigma * n.flip, conditioned on the clip's LAST frame.
3. The UNet denoises the backward branch (EDM preconditioning of SVD's v-prediction); in every
   temporal self-attention layer it attends with the forward branch's map rotated by 180 degrees
   (variant ``rotation``; ``no-rotation`` and ``no-rotation-vo`` use the q, k of their own
   input and no map: trained q, k for ``no-rotation``, the base ones for ``no-rotation-vo``).
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
Randomness (clip order, window starts, latent samples, sigma, noise) is a pure function of the
seed and a sample's position in the run, so a resumed run repeats an uninterrupted one, and N
processes at batch B, one process at batch N*B and one at batch B with N-step accumulation all
see the same samples.
"""

from __future__ import annotations

import contextlib
import csv
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import attention, backbones, backward, conditioning
from .backbones import Rows
from .train_config import DUAL_PASSES, TrainConfig
from .utils import (
    FOLDER_KINDS, InbetweeningError, atomic_torch_save, check_target, check_writable, folder_mark,
    mix_seed, why_protected,
)

LOG_FILE = "log.csv"
CHECKPOINT_DIR = "checkpoints"

# -- the loss ---------------------------------------------------------------------------------


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
        self.backbone = backbones.for_model(unet)
        self.plans, self.dual_pass = plans, dual_pass
        self.rotate = any(p.rotate for p in plans.values())
        self.register_buffer("ids", added_time_ids, persistent=False)

    def _unet(self, noisy, sigma, embedding, cond_latent):
        return self.backbone.call(self.unet, noisy, sigma, Rows(embedding, cond_latent, self.ids))

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
        denoised = self.backbone.from_prediction(noisy_b, sigma, v_b)
        per_sample = ((denoised - target) ** 2).mean(dim=(1, 2, 3, 4))
        per_sample = per_sample * conditioning.loss_weight(sigma)
        return per_sample.mean(), per_sample.detach()


# -- data: clips -> latents -> random batches ------------------------------------------------------


def _generator(seed: int, *keys: int) -> torch.Generator:
    """A generator that is a pure function of (seed, keys): the same in every process and run."""
    return torch.Generator().manual_seed(mix_seed(seed, *keys))


@dataclass
class Encoded:
    """What a clip contributes to a batch."""

    z: torch.Tensor  # (F, C, h, w) latents * scaling_factor
    emb: torch.Tensor  # (2, 1, D) CLIP embeddings of the first and last frame
    ends: torch.Tensor | None  # (2, 3, H, W) first and last frame, for pixel-space augmentation


class ClipEncoder:
    """Encodes windows of the data set's videos for training (no grad): the latents are the
    VAE's mode (cached per window when ``cache``), or a sample drawn with a given generator."""

    def __init__(self, pipe, dataset, cache: bool, keep_ends: bool, chunk: int = 8):
        self.pipe, self.dataset, self.chunk = pipe, dataset, chunk
        self.cache: dict[tuple[int, int], Encoded] | None = {} if cache else None
        self.keep_ends = keep_ends

    @torch.no_grad()
    def __call__(self, source: int, start: int, generator: torch.Generator | None = None
                 ) -> Encoded:
        """The window of video ``source`` from frame ``start``; ``generator``: sample the
        latents with it (never cached), else take the mode."""
        key = (source, start)
        if generator is None and self.cache is not None and key in self.cache:
            return self.cache[key]
        pipe = self.pipe
        x = self.dataset.window(source, start).to(pipe.unet.device)  # (F, 3, H, W)
        ends = x[[0, -1]]
        emb = conditioning.clip_embedding(pipe.image_encoder, pipe.feature_extractor, ends)
        out = Encoded(self._latents(x, generator).cpu(), emb.float().cpu(),
                      ends.cpu() if self.keep_ends else None)
        if generator is None and self.cache is not None:
            self.cache[key] = out
        return out

    def _latents(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.pipe.vae
        parts = []
        for a in range(0, len(x), self.chunk):
            dist = vae.encode(x[a:a + self.chunk].to(vae.dtype)).latent_dist
            parts.append(dist.mode() if generator is None else dist.sample(generator=generator))
        return torch.cat(parts).float() * vae.config.scaling_factor


class Batches:
    """Micro-batch ``m`` of the whole run, for this process. The global stream of samples is a
    pure function of the seed: position p draws item ``perm(epoch)[p % n]`` (``--clips random``:
    a video, at a random start, its latents sampled; ``fixed``: one of the data set's windows)
    with its own sigma and noise, so any split into processes, micro-steps and batches sees the
    same samples."""

    def __init__(self, cfg: TrainConfig, dataset, pipe, rank: int, world: int):
        self.cfg, self.dataset, self.pipe = cfg, dataset, pipe
        self.rank, self.world = rank, world
        self.random = cfg.clips == "random"
        self.encoder = ClipEncoder(pipe, dataset, cache=not self.random,
                                   keep_ends=cfg.cond_aug == "pixel")
        self.items = dataset.videos if self.random else len(dataset)  # what an epoch permutes
        self.global_batch = cfg.batch_size * world
        self.offset = 0  # position of micro-step 0 (a resumed run continues where it stopped)
        self._perms: dict[int, torch.Tensor] = {}

    def item(self, position: int) -> int:
        """The video (random) or window (fixed) that ``position`` draws."""
        n = self.items
        epoch = position // n
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=_generator(self.cfg.seed, 1, epoch))}
        return int(self._perms[epoch][position % n])

    def window(self, position: int) -> tuple[int, int]:
        """(video, start frame) of the clip that ``position`` draws."""
        if not self.random:
            return self.dataset.clips[self.item(position)]
        source = self.item(position)
        g = _generator(self.cfg.seed, 3, position)
        return source, int(torch.randint(self.dataset.starts(source), (1,), generator=g))

    def position(self, micro_step: int) -> int:
        """Samples consumed (all processes) before micro-step ``micro_step``: the data position."""
        return self.offset + micro_step * self.global_batch

    def _sample(self, position: int) -> dict[str, torch.Tensor]:
        """One training sample (on the CPU): a clip, its noise level, noise and conditioning."""
        cfg = self.cfg
        latent_g = _generator(cfg.seed, 4, position) if self.random else None
        item = self.encoder(*self.window(position), latent_g)
        g = _generator(cfg.seed, 2, position)
        if cfg.sigma_set:
            sigma = torch.tensor([cfg.sigma_set[int(torch.randint(len(cfg.sigma_set), (1,),
                                                                  generator=g))]])
        else:
            sigma = conditioning.sample_sigmas(1, cfg.p_mean, cfg.p_std, g)
        noise = torch.randn(item.z.shape, generator=g)
        lat = self._cond_latents(item, g)
        return dict(z=item.z, sigma=sigma[0], noise=noise, emb_first=item.emb[0],
                    emb_last=item.emb[1], lat_first=lat[0], lat_last=lat[1])

    def _cond_latents(self, item: Encoded, g: torch.Generator) -> torch.Tensor:
        """The first and last frame's conditioning latents, noise-augmented: (2, C, h, w)."""
        cfg, vae = self.cfg, self.pipe.vae
        if cfg.cond_aug == "latent":  # the frames' latent modes + a noise draw each
            aug = torch.randn((2,) + item.z.shape[1:], generator=g)
            return item.z[[0, -1]] / vae.config.scaling_factor + cfg.noise_aug * aug
        # published, as SVD samples: one noise draw on both frames' pixels, then the VAE's mode
        aug = torch.randn((1,) + item.ends.shape[1:], generator=g).expand_as(item.ends)
        return conditioning.image_latent(vae, item.ends.to(vae.device), cfg.noise_aug,
                                         aug.to(vae.device)).float().cpu()

    @torch.no_grad()
    def __call__(self, micro_step: int) -> dict[str, torch.Tensor]:
        b = self.cfg.batch_size
        start = self.position(micro_step) + self.rank * b
        samples = [self._sample(p) for p in range(start, start + b)]
        device = self.pipe.unet.device
        return {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}


# -- bookkeeping: checkpoints, log, samples -------------------------------------------------------


def checkpoint_files(folder: Path) -> list[Path]:
    """The ``step-N.pt`` files in ``folder`` (N zero-padded or not), the earliest step first."""
    return sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints in ``folder``."""
    for old in checkpoint_files(folder)[:-keep]:
        old.unlink()


def checkpoints(out: Path) -> list[Path]:
    """A run's checkpoints (in OUTPUT/checkpoints), the earliest step first."""
    return checkpoint_files(out / CHECKPOINT_DIR)


def append_csv_row(path: Path, row: dict, fields: list[str] | None = None) -> None:
    """Append ``row`` to the CSV file ``path`` (columns ``fields``, else the row's keys), writing
    the header first when the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or row))
        if new:
            w.writeheader()
        w.writerow(row)


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
        append_csv_row(self.path, row, self.fields)


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
    kw = {"height": clip.shape[-2], "width": clip.shape[-1],
          "num_frames": clip.shape[0], "method": "gi", "fps": cfg.fps,
          "motion_bucket_id": cfg.motion_bucket_id, "noise_aug_strength": cfg.noise_aug,
          "output_type": "np", "generator": torch.Generator().manual_seed(cfg.seed),
          "num_inference_steps": cfg.sample_steps or pipe.defaults.get("num_inference_steps", 25)}
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

    from .loading import load_pipeline
    from .locate import resolve_model

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
    """Every option within its choices and range (:meth:`TrainConfig.check`), the device one
    this machine has, the data there and the output writable: before any work."""
    if cfg.data is None:
        raise InbetweeningError("give the training clips with --data DIR")
    cfg.check()
    if cfg.device is not None:
        from .loading import default_device

        default_device(cfg.device)
    if not Path(cfg.data).exists():
        raise InbetweeningError(f"data folder not found: {cfg.data}")
    check_output(cfg)


def check_output(cfg: TrainConfig) -> None:
    """OUTPUT must be a folder this run may write into, checked before any work: not empty, not
    a file nor under one (:func:`utils.check_target`'s rules), never the root, home or current
    folder, nor what the run reads or a folder holding it (the data, the model:
    :func:`utils.why_protected`), nor a model folder or another folder this tool
    wrote (an output, a set). An existing folder is fine otherwise: it may hold an earlier run,
    which --resume continues and --overwrite replaces (only this command's own files, see
    _checkpoint_to_resume and _clear)."""
    from .locate import model_inputs

    out = Path(cfg.output)
    if str(cfg.output) == "" or not out.is_dir():
        check_target(cfg.output, overwrite=True, folder=True)
        return
    why = why_protected(out, [p for p in (cfg.data, *model_inputs(cfg.model)) if p])
    if why is None and (out / "model_index.json").exists():
        why = "it holds a model"
    if why is None and (mark := folder_mark(out)) is not None:
        why = f"this tool wrote it as {FOLDER_KINDS.get(mark.get('kind'), 'something else')}"
    if why:
        raise InbetweeningError(f"will not train into the folder {out}: {why}")
    check_writable(out)


# What every checkpoint holds (see _save_checkpoint).
CHECKPOINT_KEYS = ("step", "elapsed", "weights", "optimizer", "scheduler", "rng", "data")


def read_checkpoint(path: Path) -> dict:
    """The state in a checkpoint of ``inbetween train``, or an InbetweeningError naming the file
    and why it is not one (damaged, truncated, or another kind of file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch.load says "not my file" in many ways
        why = "it cannot be read: damaged, truncated or another kind of file"
    else:
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        why = f"it holds no {', '.join(missing)}" if missing else _malformed(state)
    if why:
        raise InbetweeningError(f"{path} is not a checkpoint of inbetween train ({why})")
    return state


def _malformed(state: dict) -> str | None:
    """What in a checkpoint's state is not as _save_checkpoint writes it, or None."""
    if not (isinstance(state["weights"], dict) and isinstance(state["step"], int)
            and isinstance(state["data"], dict) and {"position", "clips"} <= set(state["data"])):
        return "its weights, step or data position are not as this tool writes them"
    return None


def _checkpoint_to_resume(cfg: TrainConfig, out: Path, say=print) -> tuple[Path, dict] | None:
    """The checkpoint to resume from (its path and state), or None; refuses to clobber an earlier
    run. ``--resume FILE`` must be a checkpoint of this tool; ``--resume`` (the latest) passes
    over damaged latest checkpoints to the previous good one, saying so."""
    if cfg.resume not in (None, "", "latest"):
        path = Path(cfg.resume)
        if not path.is_file():
            raise InbetweeningError(f"checkpoint not found: {path}")
        return path, read_checkpoint(path)
    found = checkpoints(out)
    if cfg.resume == "latest":
        return _latest_readable(found, out, say)
    if (found or (out / backward.WEIGHTS_FILENAME).exists()) and not cfg.overwrite:
        raise InbetweeningError(f"{out} holds an earlier run; pass --resume to continue it or "
                                "--overwrite to start again")
    return None


def _latest_readable(found: list[Path], out: Path, say) -> tuple[Path, dict] | None:
    """The latest of ``found`` that reads as a checkpoint, with its state."""
    if not found:
        say(f"note: no checkpoint in {out / CHECKPOINT_DIR}; starting from step 0")
        return None
    damaged = []
    for path in reversed(found):
        try:
            state = read_checkpoint(path)
        except InbetweeningError:
            damaged.append(path.name)
            continue
        if damaged:
            say(f"note: {', '.join(damaged)} cannot be read (damaged or truncated); resuming "
                f"from the previous checkpoint, {path.name}")
        return path, state
    raise InbetweeningError(f"no readable checkpoint in {out / CHECKPOINT_DIR} (all damaged or "
                            "truncated); run without --resume and with --overwrite to start again")


def _clear(out: Path) -> None:
    """What --overwrite replaces: this command's own files in OUTPUT, nothing else."""
    for p in checkpoints(out):
        p.unlink()
    for name in (backward.WEIGHTS_FILENAME, LOG_FILE):
        (out / name).unlink(missing_ok=True)
    samples = out / "samples"
    for p in samples.glob("step-*.mp4"):
        p.unlink()
    with contextlib.suppress(OSError):  # kept when it holds anything else
        samples.rmdir()


# -- the run ---------------------------------------------------------------------------------------


def train(cfg: TrainConfig, pipe=None) -> Path:
    """Fine-tune backward weights; returns the path of ``OUTPUT/backward.safetensors`` (or of the
    last checkpoint, when ``stop_after`` ends the run early).

    ``pipe``: an already loaded InbetweenPipeline to train on (its UNet is left unchanged; the
    backward weights are set on it); default: load ``cfg.model``.
    """
    from accelerate.state import AcceleratorState

    check_config(cfg)
    accelerator = _accelerator(cfg)
    try:
        return _train_in_this_process(cfg, accelerator, pipe)
    finally:
        if accelerator.num_processes == 1:  # let the next train() in this process choose again
            AcceleratorState._reset_state()


def _accelerator(cfg: TrainConfig):
    """This process's Accelerator (one of several under torchrun / accelerate launch)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)
    except ValueError as e:  # an earlier Accelerator in this process fixed another precision
        if "already been initialized" not in str(e):
            raise
        AcceleratorState._reset_state()
        return Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)


@dataclass
class _Run:
    """What this process's share of a training run holds."""

    cfg: TrainConfig
    accelerator: object
    out: Path
    pipe: object  # the frozen base, an InbetweenPipeline
    base_name: str  # what the weights file records as the base model
    objective: BackwardObjective
    params: list[torch.nn.Parameter]  # the trainable backward weights (objective's parameters)
    dataset: object  # inbetweening.data.ClipDataset
    batches: Batches
    frames: int
    size: tuple[int, int]
    model: object  # the objective as accelerate prepared it (DDP-wrapped with several processes)
    optimizer: object
    scheduler: object
    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # seconds spent in optimizer steps, over all resumed parts

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, *text) -> None:
        self.accelerator.print(*text)


def _train_in_this_process(cfg: TrainConfig, accelerator, pipe) -> Path:
    """The run, as one of its processes (all of them run this)."""
    out = Path(cfg.output)
    resume_from = _checkpoint_to_resume(cfg, out, accelerator.print)
    if accelerator.is_main_process and cfg.overwrite and resume_from is None:
        _clear(out)
    accelerator.wait_for_everyone()
    run = _set_up(cfg, accelerator, out, pipe)
    if resume_from is not None:
        _resume(run, *resume_from)
    _announce(run)
    _loop(run)
    _check_processes_agree(run)
    if run.step < cfg.steps:
        run.say(f"stopped after step {run.step} of {cfg.steps}; continue with --resume")
        return checkpoints(out)[-1] if checkpoints(out) else out
    return _save_weights(run)


def _set_up(cfg: TrainConfig, accelerator, out: Path, pipe) -> _Run:
    """The model, the data and the optimizer of a fresh run."""
    pipe, base_name = _frozen_base(cfg, accelerator, pipe)
    weights = backward.init_backward_weights(pipe.unet, cfg.variant, torch.float32)
    objective = _objective(cfg, pipe, weights, accelerator.device)
    params = list(weights.values())
    dataset, frames, size = _dataset(cfg, pipe)
    batches = Batches(cfg, dataset, pipe, accelerator.process_index, accelerator.num_processes)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
    model, optimizer = accelerator.prepare(objective, optimizer)
    return _Run(cfg, accelerator, out, pipe, base_name, objective, params, dataset, batches,
                frames, size, model, optimizer, scheduler)


def _frozen_base(cfg: TrainConfig, accelerator, pipe) -> tuple[object, str]:
    """The base model (``pipe``, else loaded), frozen, and the name its weights file records."""
    if cfg.model:
        base_name = str(cfg.model)
    elif pipe is None:
        base_name = "inbetweening-toy"  # the bundled toy model
    else:
        base_name = getattr(pipe, "name_or_path", None) or "unknown"
    if pipe is None:
        pipe = load_base(cfg, accelerator.device, _weight_dtype(accelerator.mixed_precision))
    for part in (pipe.unet, pipe.vae, pipe.image_encoder):
        part.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return pipe, base_name


def _objective(cfg: TrainConfig, pipe, weights, device) -> BackwardObjective:
    """The loss of the trainable backward ``weights`` (fp32, on the temporal attention
    processors) with the frozen base."""
    from .methods import layer_plans

    plans = layer_plans("gi", pipe.unet, cfg.variant)
    ids = conditioning.added_time_ids(cfg.fps, cfg.motion_bucket_id, cfg.noise_aug, 1,
                                      device=device)
    return BackwardObjective(pipe.unet, weights, plans, ids, cfg.dual_pass)


def _dataset(cfg: TrainConfig, pipe):
    """The training clips, their frame count and their (width, height)."""
    from .data import ClipDataset

    # With no image, default_size is the published training size for an SVD-family UNet
    # (config sample_size 96: 1024x576, landscape) and the config's own square size otherwise.
    size = cfg.size or tuple(pipe.default_size())
    frames = cfg.frames or pipe.unet.config.num_frames
    return ClipDataset(cfg.data, frames, size, cfg.stride), frames, size


def _resume(run: _Run, path: Path, state: dict) -> None:
    """Continue ``run`` from the checkpoint ``path`` (``state``: as read_checkpoint read it):
    weights, optimizer, schedule, random state and the position in the data."""
    cfg, batches = run.cfg, run.batches
    if (list(state["weights"]) != run.objective.names
            or state.get("config", {}).get("variant", cfg.variant) != cfg.variant):
        raise InbetweeningError(f"{path} holds weights of another model or variant")
    with torch.no_grad():
        for p, t in zip(run.params, state["weights"].values()):
            p.copy_(t)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    run.step, run.elapsed = state["step"], state["elapsed"]
    batches.offset = state["data"]["position"] - batches.position(run.step * cfg.grad_accum)
    if state["data"]["clips"] != batches.items:
        what = "videos" if batches.random else "clips"
        run.say(f"note: the data set had {state['data']['clips']} {what} at the checkpoint and "
                f"has {batches.items} now; the clip order differs from an uninterrupted run")
    run.say(f"resuming from {path} (step {run.step})")


def _announce(run: _Run) -> None:
    cfg, acc = run.cfg, run.accelerator
    run.say(f"data: {run.dataset.summary()}")
    run.say(f"training {cfg.variant} backward weights ({sum(p.numel() for p in run.params):,} "
            f"parameters) of {run.base_name} on {acc.num_processes} "
            f"process(es), {acc.device}, batch {cfg.batch_size} x {acc.num_processes} "
            f"processes x {cfg.grad_accum} accumulation = "
            f"{run.batches.global_batch * cfg.grad_accum} clips per step, "
            f"{run.size[0]}x{run.size[1]}, {run.frames} frames, mixed precision "
            f"{acc.mixed_precision}, dual pass {cfg.dual_pass}")
    run.say("clips: " + ("a random window of a video per sample, latents sampled from the VAE"
                         if cfg.clips == "random" else "fixed windows, latents (the VAE's mode) "
                         "cached") + f"; conditioning noise on the {cfg.cond_aug}s")


# -- the loop --------------------------------------------------------------------------------------


def _loop(run: _Run) -> None:
    """Optimizer steps until the run's end (``steps``, or ``stop_after``), logging each and
    checkpointing and sampling as asked."""
    cfg, acc = run.cfg, run.accelerator
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
    log = CsvLog(run.out / LOG_FILE, run.step) if run.main else None
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(total=cfg.steps, initial=run.step, desc="train",
               disable=not (run.main and cfg.progress), dynamic_ncols=True)
    while run.step < end:
        t0 = time.time()
        losses, sigmas, grad_norm = _optimizer_step(run)
        run.step += 1
        run.elapsed += time.time() - t0
        all_losses = acc.gather(losses).float().cpu()
        all_sigmas = acc.gather(sigmas).float().cpu()
        if run.main:
            log.write(run.step, all_losses, all_sigmas, float(grad_norm),
                      run.scheduler.get_last_lr()[0], run.elapsed)
            bar.update(1)
            bar.set_postfix(loss=f"{all_losses.mean().item():.4f}")
        _checkpoint_and_sample(run, end, bar)
    bar.close()


def _optimizer_step(run: _Run):
    """One optimizer step over ``grad_accum`` micro-batches; returns this process's per-sample
    losses and sigmas, and the gradient norm before clipping."""
    cfg, acc, accum = run.cfg, run.accelerator, run.cfg.grad_accum
    losses, sigmas = [], []
    for micro in range(accum):
        batch = run.batches(run.step * accum + micro)
        sync = micro == accum - 1
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss, per_sample = run.model(batch)
            acc.backward(loss / accum)
        losses.append(per_sample)
        sigmas.append(batch["sigma"])
    grad_norm = acc.clip_grad_norm_(run.params, cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return torch.cat(losses), torch.cat(sigmas), grad_norm


def _checkpoint_and_sample(run: _Run, end: int, bar) -> None:
    """After a step: the checkpoint and the validation video, when due."""
    cfg, step = run.cfg, run.step
    if step % cfg.checkpoint_every == 0 or step == end:
        if run.main:
            _save_checkpoint(run)
        run.accelerator.wait_for_everyone()
    if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
        if run.main:
            path = run.out / "samples" / f"step-{step:07d}.mp4"
            sample = write_sample(run.pipe, run.dataset, cfg, path)
            bar.write(f"step {step}: sample {sample}")
        run.accelerator.wait_for_everyone()


def _save_checkpoint(run: _Run) -> None:
    cfg, batches, objective = run.cfg, run.batches, run.objective
    position = batches.position(run.step * cfg.grad_accum)
    state = {
        "step": run.step,
        "elapsed": run.elapsed,
        "weights": {n: p.detach().cpu() for n, p in zip(objective.names, objective.weights)},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": _rng_state(),
        "data": {"position": position, "epoch": position // batches.items,
                 "clips": batches.items, "global_batch": batches.global_batch},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    atomic_torch_save(state, run.out / CHECKPOINT_DIR / f"step-{run.step:07d}.pt")
    prune_checkpoints(run.out / CHECKPOINT_DIR, cfg.keep_checkpoints)


# -- the result ------------------------------------------------------------------------------------


def _check_processes_agree(run: _Run) -> None:
    """Every process must end with the same weights (a digest of them, gathered)."""
    acc = run.accelerator
    digest = torch.stack([p.detach().double().sum() + p.detach().double().abs().sum()
                          for p in run.params]).unsqueeze(0)
    digests = acc.gather(digest.to(acc.device))
    if not torch.equal(digests, digest.to(digests.device).expand_as(digests)):
        raise RuntimeError("the processes ended with different weights")


def _save_weights(run: _Run) -> Path:
    """One consistent weights file, written by the main process only; returns its path."""
    from .loading import parse_dtype

    cfg, acc = run.cfg, run.accelerator
    path = run.out / backward.WEIGHTS_FILENAME
    if run.main:
        meta = {"base_model": run.base_name, "num_frames": run.frames,
                "size": f"{run.size[0]}x{run.size[1]}", "steps": run.step,
                "variant": cfg.variant, "global_batch": run.batches.global_batch * cfg.grad_accum,
                "lr": cfg.lr, "trained_by": "inbetween train"}
        backward.save_backward_weights(path, dict(zip(run.objective.names, run.params)),
                                       metadata=meta,
                                       dtype=parse_dtype(cfg.save_dtype, torch.device("cpu")))
        run.say(f"wrote {path} ({run.step} steps, {acc.num_processes} process(es) agreed on the "
                f"weights)")
    acc.wait_for_everyone()
    return path
