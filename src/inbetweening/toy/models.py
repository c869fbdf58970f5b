"""Tiny configurations of the real SVD classes, sized for the toy world on a 2-core CPU.

The same classes as Stable Video Diffusion (diffusers' UNetSpatioTemporalConditionModel and
EulerDiscreteScheduler with SVD's config; transformers' CLIP vision model), so every code path
of the product runs unchanged on them. The one exception is the autoencoder: a fitted linear
patch autoencoder (:mod:`inbetweening.toy.autoencoder`, which says why) with the VAE's
interface, downsampling by 8 as SVD's does (64x64 frames -> 8x8 latents), with 32 latent
channels instead of 4.
"""

from __future__ import annotations


from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

# (the bundled models' folders and names live in the torch-free inbetweening.locate)
from ..locate import AMBIGUOUS_MODEL, BUNDLED_MODEL, NAMED_MODELS  # noqa: F401
from .autoencoder import PatchAutoencoder
from .world import WorldConfig

WORLD = WorldConfig()
LATENT_CHANNELS = 32
EMBED_DIM = 64

SVD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
    sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
    steps_offset=1,
)


def scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)


def vae() -> PatchAutoencoder:
    """The toy autoencoder (unfitted: a random orthonormal basis until ``fit``)."""
    return PatchAutoencoder(latent_channels=LATENT_CHANNELS, patch_size=8)


def unet(num_frames: int = WORLD.frames) -> UNetSpatioTemporalConditionModel:
    return UNetSpatioTemporalConditionModel(
        sample_size=WORLD.size // 8, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=EMBED_DIM,
        num_attention_heads=(2, 4), addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=96, transformer_layers_per_block=1,
        num_frames=num_frames,
    )


def image_encoder() -> CLIPVisionModelWithProjection:
    cfg = CLIPVisionConfig(
        hidden_size=64, projection_dim=EMBED_DIM, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, image_size=WORLD.size, patch_size=16,
    )
    return CLIPVisionModelWithProjection(cfg)


def feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": WORLD.size},
                              crop_size={"height": WORLD.size, "width": WORLD.size})
