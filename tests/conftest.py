"""Shared fixtures: tiny random models of the real SVD classes (the sizes of a tiny SVD that runs on a CPU)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("INBETWEENING_TEST_THREADS", "2")))


def tiny_unet(num_frames: int = 6, seed: int = 0, channels=(32, 64), cross_dim: int = 32):
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    return UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=channels, layers_per_block=2, cross_attention_dim=cross_dim,
        num_attention_heads=(2, 4), addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=96, transformer_layers_per_block=1,
        num_frames=num_frames,
    )


def tiny_components(num_frames: int = 6, seed: int = 0):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from inbetweening.toy.models import SVD_SCHEDULER_CONFIG

    unet = tiny_unet(num_frames, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64,
        scaling_factor=0.18215, force_upcast=False)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, image_size=224, patch_size=32))
    return dict(vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(),
                scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
                feature_extractor=CLIPImageProcessor())


def perturb_backward(pipe, scale: float = 0.05, seed: int = 3):
    """Random backward weights (base + noise), so the backward direction differs from the base."""
    from inbetweening import backward

    g = torch.Generator().manual_seed(seed)
    params = backward.init_backward_weights(pipe.unet, requires_grad=False)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return params


@pytest.fixture
def tiny_pipe():
    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    perturb_backward(pipe)
    return pipe


@pytest.fixture
def keyframes():
    g = torch.Generator().manual_seed(7)
    return torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SVD saved as a diffusers folder, with a backward-weights file beside it."""
    from inbetweening.pipeline import InbetweenPipeline

    root = tmp_path_factory.mktemp("tiny-svd")
    pipe = InbetweenPipeline(**tiny_components())
    perturb_backward(pipe)
    pipe.save_pretrained(root / "model")
    pipe.save_backward_weights(root / "backward.safetensors", base_model="tiny-random")
    return root


@pytest.fixture(scope="session")
def toy_clips_dir(tmp_path_factory):
    """Two toy clips (8 frames, 64x64) as PNG frame folders: training data."""
    from inbetweening import media
    from inbetweening.toy.world import make_clips

    root = tmp_path_factory.mktemp("toy-clips")
    for i, video in enumerate(make_clips(0, 2).video.permute(0, 1, 3, 4, 2).numpy()):
        media.write_video(video, root / f"clip{i}")
    return root


@pytest.fixture(scope="module")
def toy_keyframe_files(tmp_path_factory):
    """The first and last frames of a held-out toy clip (its vehicles kept in view), as PNGs."""
    import numpy as np
    import PIL.Image

    from inbetweening.toy.world import HELD_OUT_SEED, make_clip

    folder = tmp_path_factory.mktemp("toy-keys")
    video = (make_clip(HELD_OUT_SEED, 3, stay_in_view=True).video[0].permute(0, 2, 3, 1).numpy()
             * 255).round().astype(np.uint8)
    paths = [folder / "a.png", folder / "b.png"]
    PIL.Image.fromarray(video[0]).save(paths[0])
    PIL.Image.fromarray(video[-1]).save(paths[1])
    return paths


@pytest.fixture
def memory_settings_applied(monkeypatch) -> list:
    """The names of the memory settings that loading.apply_memory puts pipelines in while the
    test runs (it still applies them)."""
    from inbetweening import loading

    applied, real = [], loading.apply_memory

    def spy(pipe, name, device):
        applied.append(name)
        return real(pipe, name, device)

    monkeypatch.setattr(loading, "apply_memory", spy)
    return applied
