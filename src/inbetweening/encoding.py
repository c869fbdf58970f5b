"""The pipeline's image side, on SVD's components: keyframes in (preprocessed, CLIP-embedded,
noise-augmented VAE latents), frames out (the VAE decoding in chunks). :class:`KeyframeCodec` is the
part of ``InbetweenPipeline`` that does it; it uses the pipeline's ``vae``, ``image_encoder``,
``feature_extractor``, ``video_processor`` and ``scheduler``."""

from __future__ import annotations

import contextlib

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import conditioning
from .conditioning import KeyframeCondition
from .inputs import to_pil
from .utils import InbetweeningError


class KeyframeCodec:
    """Keyframes to conditions and latents to frames (see the module's docstring)."""

    def preprocess(self, image, height: int, width: int, fit: str) -> torch.Tensor:
        """A keyframe (see :func:`~inbetweening.inputs.to_pil`) as a (1, 3, height, width)
        tensor in [-1, 1]: centre-cropped to the output aspect ratio and resized
        (``fit="crop"``), or resized as it is (``fit="stretch"``)."""
        if fit not in ("crop", "stretch"):
            raise InbetweeningError(f"fit must be 'crop' or 'stretch', not {fit!r}")
        mode = "crop" if fit == "crop" else "default"
        return self.video_processor.preprocess(to_pil(image), height=height, width=width,
                                               resize_mode=mode)

    def encode_keyframe(self, image: torch.Tensor, noise_aug_strength: float,
                        noise: torch.Tensor, device) -> KeyframeCondition:
        """Conditioning for one keyframe, augmented with ``noise`` (the keyframe's shape)."""
        embedding = conditioning.clip_embedding(self.image_encoder, self.feature_extractor,
                                                image.to(device))
        with self.vae_upcast():
            latent = conditioning.image_latent(self.vae, image.to(device), noise_aug_strength,
                                               noise)
        return KeyframeCondition(embedding=embedding, latent=latent.to(embedding.dtype))

    def keyframe_conditions(self, keyframes, height: int, width: int, fit: str,
                            noise_aug_strength: float, generator, device,
                            shared_noise: bool = True) -> tuple[list, list]:
        """Conditioning for one video's keyframes (start, and end if not None), and the
        preprocessed keyframe images. As GI's published code does, ONE augmentation noise, of a
        keyframe's shape and drawn from ``generator``, is added to every keyframe; with
        ``shared_noise`` False each keyframe gets a draw of its own, in order."""
        images = [self.preprocess(k, height, width, fit) for k in keyframes if k is not None]
        noises = [randn_tensor(images[0].shape, generator=generator, device=device,
                               dtype=images[0].dtype)
                  for _ in range(1 if shared_noise else len(images))]
        return images, [self.encode_keyframe(im, noise_aug_strength, noises[i % len(noises)],
                                             device) for i, im in enumerate(images)]

    def initial_latent(self, shape, generator, given: torch.Tensor | None, device) -> torch.Tensor:
        """The latent sampling starts from: ``given`` (one video's part of the ``latents``
        argument) or drawn from ``generator``, times the scheduler's initial sigma (as
        diffusers' SVD pipeline prepares its latents)."""
        if given is None:
            x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            x = given.to(device=device, dtype=torch.float32)
        return x * self.scheduler.init_noise_sigma

    @contextlib.contextmanager
    def vae_upcast(self):
        """The VAE in fp32 inside the block where it asks for it (``force_upcast`` in fp16), put
        back afterwards, also when the block fails."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)

    def decode(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """(1, F, C, h, w) latents -> (1, F, 3, H, W) frames in [-1, 1], ``decode_chunk_size``
        frames at a time (the temporal decoder mixes frames within a chunk)."""
        z = latents.flatten(0, 1) / self.vae.config.scaling_factor
        parts = []
        with self.vae_upcast():
            for a in range(0, z.shape[0], decode_chunk_size):
                chunk = z[a:a + decode_chunk_size].to(self.vae.dtype)
                parts.append(self.vae.decode(chunk, num_frames=chunk.shape[0]).sample.float())
        return torch.cat(parts).unflatten(0, latents.shape[:2])

    def frames(self, latents: list[torch.Tensor], output_type: str, decode_chunk_size: int):
        """Each video's (1, F, C, h, w) latent -> the output of ``output_type``, video by video."""
        if output_type == "latent":
            return torch.cat(latents)
        video = torch.cat([self.decode(z, decode_chunk_size) for z in latents])
        return self.video_processor.postprocess_video(video.permute(0, 2, 1, 3, 4),
                                                      output_type=output_type)

