"""How an SVD UNet is conditioned on an image, and the EDM parametrisation it is trained in.

One place for what sampling, fine-tuning and the toy models' training all share: the CLIP image
embedding, the noise-augmented VAE latent of the conditioning frame, the added time ids, and
the v-prediction preconditioning of the Euler scheduler SVD ships with. The model call that puts
them together is the backbone's (:mod:`inbetweening.backbones`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)

@dataclass
class KeyframeCondition:
    """What the model is conditioned on for one keyframe."""

    embedding: torch.Tensor  # (1, 1, D) CLIP image embedding
    latent: torch.Tensor  # (1, C, h, w) VAE latent of the noise-augmented image (unscaled)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_embedding(image_encoder, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding as SVD computes it. images: (B, 3, H, W) in [-1, 1] -> (B, 1, D).

    Resized with anti-aliasing to the encoder's input size in [-1, 1] (as the SVD pipeline does),
    then normalised with the feature extractor's mean and std.
    """
    size = image_encoder.config.image_size
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = _resize_with_antialiasing(x, (size, size))
    x = (x + 1.0) / 2.0
    mean = getattr(feature_extractor, "image_mean", None) or CLIP_MEAN
    std = getattr(feature_extractor, "image_std", None) or CLIP_STD
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(image_encoder.dtype)
    return image_encoder(x).image_embeds.unsqueeze(1)


def image_latent(vae, images: torch.Tensor, noise_aug_strength: float,
                 noise: torch.Tensor) -> torch.Tensor:
    """The conditioning latent: VAE mode of the noise-augmented image, NOT scaled by the VAE's
    scaling factor (SVD's convention). images: (B, 3, H, W) in [-1, 1] -> (B, C, h, w)."""
    x = images + noise_aug_strength * noise
    return vae.encode(x.to(vae.dtype)).latent_dist.mode()


def added_time_ids(fps: int, motion_bucket_id: int, noise_aug_strength: float, batch: int,
                   dtype=torch.float32, device=None) -> torch.Tensor:
    """SVD's micro-conditioning [fps - 1, motion bucket, noise augmentation], one row per sample.
    ``fps`` is the frame rate the video is meant for; the UNet sees ``fps - 1`` as SVD trained."""
    ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype, device=device)
    return ids.repeat(batch, 1)


def edm_scalings(sigma: torch.Tensor):
    """v-prediction EDM preconditioning of SVD: (c_in, c_skip, c_out, c_noise) for ``sigma``.

    denoised = c_skip * x + c_out * unet(c_in * x, c_noise, ...). Matches diffusers'
    EulerDiscreteScheduler with ``prediction_type="v_prediction"`` and continuous timesteps.
    """
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_noise = 0.25 * torch.log(sigma)
    return c_in, c_skip, c_out, c_noise


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM loss weight for unit-variance data: (1 + sigma^2) / sigma^2."""
    return (1.0 + sigma**2) / sigma**2


def sample_sigmas(batch: int, mean: float, std: float, generator: torch.Generator,
                  device=None) -> torch.Tensor:
    """Training noise levels: ln(sigma) ~ N(mean, std^2), one per sample."""
    z = torch.randn(batch, generator=generator, dtype=torch.float64)
    return torch.exp(mean + std * z).float().to(device)


def log_sigma_bucket(sigma: float) -> str:
    """A readable noise-level bucket for logging losses by sigma."""
    edges = [0.1, 0.5, 1.0, 2.0, 5.0, 20.0]
    for e in edges:
        if sigma < e:
            return f"<{e:g}"
    return f">={edges[-1]:g}"


__all__ = [
    "KeyframeCondition", "clip_embedding", "image_latent", "added_time_ids", "edm_scalings",
    "loss_weight", "sample_sigmas", "log_sigma_bucket",
]
