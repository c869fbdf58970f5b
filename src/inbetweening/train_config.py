"""The options of backward-motion fine-tuning (:mod:`inbetweening.training`): one typed
description, whose fields' ``metadata`` also describe them on the command line (``inbetween
train`` derives its options from it, see :mod:`inbetweening.commands.args`).

The defaults are the published recipe where it has one (the paper authors' released training).
This module imports no deep-learning library, so the command line can describe it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import (
    FPS_RANGE, FRAMES_RANGE, SEED_RANGE, SIDE_RANGE, STEPS_RANGE, check_fields, parse_size,
)
from .utils import InbetweeningError

DUAL_PASSES = ("split", "fused", "reference")  # see inbetweening.training's docstring
# the keys of backward.VARIANTS (a test holds them equal)
VARIANTS = ("rotation", "no-rotation", "no-rotation-vo")
COND_AUGS = ("pixel", "latent")
CLIPS = ("random", "fixed")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_DTYPES = ("fp32", "fp16", "bf16")


def parse_sigma_set(text: str | None) -> tuple[float, ...] | None:
    """'0.5,1,2' -> (0.5, 1.0, 2.0); None -> None ('' is refused)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise InbetweeningError(f"--sigma-set takes numbers like 0.5,1,2, not {text!r}") from None


def _opt(text: str, **more) -> dict:
    """A field's command-line description (see inbetweening.commands.args) and the values it
    takes (``choices``, ``range``: see inbetweening.options.check_fields)."""
    return {"help": text, **more}


MANY = 10_000_000  # the most steps (of any kind) a run counts


@dataclass
class TrainConfig:
    data: str | None = field(default=None, metadata=_opt(  # see inbetweening.data
        "folder of videos or frame folders", required=True))
    output: str = field(default="runs/backward", metadata=_opt(
        "output folder: gets backward.safetensors, checkpoints/, log.csv, samples/",
        short="-o", required=True))
    model: str | None = field(default=None, metadata=_opt(
        "base: diffusers SVD folder or hub id (default: the bundled toy model)"))
    variant: str = field(default="rotation", metadata=_opt(
        "rotation (the paper: v, o trained with the forward model's rotated maps), no-rotation "
        "(its 'w/o RA' ablation: q, k, v, o trained, no maps) or no-rotation-vo (v, o trained, "
        "no maps)", choices=VARIANTS))
    # data
    frames: int | None = field(default=None, metadata=_opt(
        "frames per clip (default: the model's)", range=FRAMES_RANGE, group="data"))
    stride: int = field(default=2, metadata=_opt("take every stride-th frame", range=(1, 1000),
                                                 group="data"))
    size: tuple[int, int] | None = field(default=None, metadata=_opt(  # (width, height)
        "WxH, multiples of 8 (default: 1024x576 for an SVD model, as published; another "
        "model's own size)", parse=parse_size, range=SIDE_RANGE, group="data"))
    clips: str = field(default="random", metadata=_opt(
        "random (published): every sample a random window of a video, its latents a fresh "
        "sample of the VAE's distribution; fixed: the videos' non-overlapping windows, encoded "
        "once (the VAE's mode) and cached: faster on a small set", choices=CLIPS, group="data"))
    # optimisation
    steps: int = field(default=15_000, metadata=_opt("optimizer steps", range=(1, MANY),
                                                     group="optimisation"))
    batch_size: int = field(default=1, metadata=_opt(
        "clips per process per micro-step", range=(1, 1024), group="optimisation"))
    grad_accum: int = field(default=1, metadata=_opt(
        "micro-steps per optimizer step", range=(1, 1024), group="optimisation"))
    lr: float = field(default=1e-4, metadata=_opt("AdamW learning rate", range=(0, 1),
                                                  above=True, group="optimisation"))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_opt(
        "AdamW betas", range=(0, 1), cli=False))
    weight_decay: float = field(default=1e-2, metadata=_opt(
        "AdamW weight decay", range=(0, 1), group="optimisation"))
    eps: float = field(default=1e-8, metadata=_opt("AdamW eps", range=(0, 1), above=True,
                                                   cli=False))
    grad_clip: float = field(default=1.0, metadata=_opt(
        "clip the gradient norm to this", range=(0, 1_000_000), above=True,
        group="optimisation"))
    warmup: int = field(default=0, metadata=_opt(
        "linear warm-up steps (0: constant lr, as published)", range=(0, MANY),
        group="optimisation"))
    # noise and conditioning
    p_mean: float = field(default=0.7, metadata=_opt(  # ln(sigma) ~ N(p_mean, p_std^2)
        "ln(sigma) mean", range=(-10, 10), group="noise and conditioning"))
    p_std: float = field(default=1.6, metadata=_opt(
        "ln(sigma) std", range=(0, 10), group="noise and conditioning"))
    sigma_set: tuple[float, ...] | None = field(default=None, metadata=_opt(
        "draw sigma from these values (e.g. 0.5,1,2)", parse=parse_sigma_set, range=(0, 10_000),
        above=True, group="noise and conditioning"))
    fps: int = field(default=7, metadata=_opt(
        "frame-rate conditioning (the UNet sees fps - 1)", range=FPS_RANGE,
        group="noise and conditioning"))
    motion_bucket_id: int = field(default=127, metadata=_opt(
        "SVD's motion-bucket conditioning", range=(0, 1023), group="noise and conditioning"))
    noise_aug: float = field(default=0.02, metadata=_opt(
        "noise augmentation of the conditioning frames", range=(0, 10),
        group="noise and conditioning"))
    cond_aug: str = field(default="pixel", metadata=_opt(
        "pixel (published, as SVD samples): one noise draw times --noise-aug added to the first "
        "and the last frame's pixels, then the VAE's mode; latent: the noise (a draw per frame) "
        "added to the frames' latent modes instead", choices=COND_AUGS,
        group="noise and conditioning"))
    # machinery
    dual_pass: str = field(default="split", metadata=_opt(
        "split: no-grad forward call + backward call on its flipped Q, K; fused: one UNet call "
        "for both; reference: explicit maps", choices=DUAL_PASSES, group="machinery"))
    mixed_precision: str | None = field(default=None, metadata=_opt(
        "frozen weights and compute in fp16/bf16, backward weights in fp32 (default: "
        "accelerate's setting, else no)", choices=PRECISIONS, group="machinery"))
    gradient_checkpointing: bool = field(default=False, metadata=_opt(
        "recompute the UNet's activations in the backward pass, to save memory",
        group="machinery"))
    device: str | None = field(default=None, metadata=_opt(
        "default: cuda if available", choices=("cpu", "cuda"), group="machinery"))
    seed: int = field(default=0, metadata=_opt(
        "seed of the clip order and windows, latent samples, noise levels and noise",
        range=SEED_RANGE, group="optimisation"))
    # bookkeeping
    checkpoint_every: int = field(default=500, metadata=_opt(
        "steps between checkpoints", range=(1, MANY), group="bookkeeping"))
    keep_checkpoints: int = field(default=2, metadata=_opt(
        "checkpoints kept", range=(1, 1000), group="bookkeeping"))
    sample_every: int | None = field(default=None, metadata=_opt(  # None: checkpoint_every
        "validation video every N steps (default: --checkpoint-every; 0: never)",
        range=(0, MANY), group="bookkeeping"))
    sample_steps: int | None = field(default=None, metadata=_opt(
        "denoising steps of the validation video (default: the model's recommendation, else "
        "25)", range=STEPS_RANGE, group="bookkeeping"))
    save_dtype: str = field(default="fp32", metadata=_opt(
        "dtype of backward.safetensors", choices=SAVE_DTYPES, group="bookkeeping"))
    resume: str | None = field(default=None, metadata=_opt(  # "latest" or a checkpoint file
        "continue from the latest checkpoint in OUTPUT, or from this one", nargs="?",
        const="latest", metavar="CHECKPOINT", group="bookkeeping"))
    overwrite: bool = field(default=False, metadata=_opt(
        "start again over an earlier run", group="bookkeeping"))
    stop_after: int | None = field(default=None, metadata=_opt(
        "end this run after this step (checkpointed); continue with --resume",
        range=(1, MANY), group="bookkeeping"))
    progress: bool = field(default=True, metadata=_opt(
        "no progress bar", negate="--no-progress", group="bookkeeping"))

    def __post_init__(self):
        if self.sample_every is None:
            self.sample_every = self.checkpoint_every

    def check(self) -> "TrainConfig":
        """Refuse options out of their choices or range (see
        :func:`inbetweening.options.check_fields`); returns self."""
        return check_fields(self)
