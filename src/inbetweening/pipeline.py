"""InbetweenPipeline: the video between two keyframes, on any diffusers SVD / SVD-XT model.

The steps of ``__call__``: check inputs -> preprocess keyframes -> condition on each end (CLIP
embedding, noise-augmented VAE latent, added time ids) -> sample (dual-directional Euler with noise
re-injection, see :mod:`inbetweening.sampling`) -> decode in chunks -> frames.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch
from transformers.utils import logging as _transformers_logging

# diffusers' SVD module asks transformers for CLIPImageProcessor, which without torchvision falls
# back to the PIL processor with a warning; the fallback is what we want, so say nothing.
_verbosity = _transformers_logging.get_verbosity()
_transformers_logging.set_verbosity_error()
try:
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion  # noqa
    from transformers import CLIPImageProcessor  # noqa: F401
finally:
    _transformers_logging.set_verbosity(_verbosity)

from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from . import attention, backward, conditioning
from .methods import check_method, is_dual, layer_plans
from .sampling import (
    InbetweenDenoiser, KeyframeCondition, count_predictions, fuse_weights, guidance_per_frame,
    sample_euler,
)
from .utils import InbetweeningError

BACKWARD_FILENAME = "backward.safetensors"  # a model folder may carry its backward weights
# ... and recommended call arguments (e.g. the toy model's step count), as a JSON object.
DEFAULTS_FILENAME = "inbetweening.json"
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class InbetweenPipelineOutput(BaseOutput):
    """``frames``: a list with one video: a list of PIL images, an (1, F, H, W, 3) array in
    [0, 1] or an (1, F, 3, H, W) tensor in [0, 1], by ``output_type``."""

    frames: list | np.ndarray | torch.Tensor


def to_pil(image: ImageInput) -> PIL.Image.Image:
    """A keyframe as an RGB PIL image. Arrays are (H, W, 3) uint8 or float in [0, 1]; tensors
    are (3, H, W) in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise InbetweeningError(f"a keyframe array must be (H, W, 3), not {image.shape}")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return PIL.Image.fromarray(image[..., :3])
    raise InbetweeningError(f"a keyframe must be a PIL image, array or tensor, not {type(image)}")


def vae_scale_factor(config) -> int:
    """Pixels per latent cell: 2 ** (blocks - 1) for diffusers' VAEs, ``patch_size`` for the toy
    model's patch autoencoder. ``config``: a model config or its dict."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if get("patch_size"):
        return int(get("patch_size"))
    return 2 ** (len(get("block_out_channels")) - 1)


def check_aspects(images: list[PIL.Image.Image], tolerance: float = 0.02) -> None:
    """Keyframes of different aspect ratios are refused: no crop would frame both alike."""
    ratios = [im.width / im.height for im in images]
    if max(ratios) / min(ratios) > 1 + tolerance:
        sizes = ", ".join(f"{im.width}x{im.height}" for im in images)
        raise InbetweeningError(f"keyframes have different aspect ratios ({sizes}); crop them to "
                                "the same shape first")


def _import_own_components(folder: Path) -> None:
    """Import the modules of this package that a model folder's ``model_index.json`` names
    (the toy model's VAE is ``inbetweening.toy.autoencoder.PatchAutoencoder``): diffusers finds a
    component class only in modules already imported."""
    import importlib

    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # not a local folder, or diffusers will say what is wrong with it
    for value in index.values() if isinstance(index, dict) else ():
        if isinstance(value, list) and value and str(value[0]).startswith(__package__ + "."):
            importlib.import_module(value[0])


class InbetweenPipeline(DiffusionPipeline):
    """Generative inbetweening (Alg. 2 of the paper) on an SVD model's components.

    Takes the same components as ``StableVideoDiffusionPipeline``; the backward weights are held
    by the UNet's temporal attention processors (see :mod:`inbetweening.backward`).
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor):
        super().__init__()
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet,
                              scheduler=scheduler, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae_scale_factor(self.vae.config)
        self.video_processor = VideoProcessor(do_resize=True,
                                              vae_scale_factor=self.vae_scale_factor)
        self.backward_metadata: dict[str, str] = {}
        self.defaults: dict = {}  # recommended __call__ arguments of this model (CLI, app, demo)
        attention.install(self.unet)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backward=None, **kwargs):
        """Load an SVD model (local diffusers folder or hub id) and, if given, backward weights
        (a file path or a dict of tensors). A local model folder holding ``backward.safetensors``
        (like the bundled toy model) gets those weights when ``backward`` is not given."""
        folder = Path(str(pretrained_model_name_or_path))
        _import_own_components(folder)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if (folder / DEFAULTS_FILENAME).is_file():
            pipe.defaults = json.loads((folder / DEFAULTS_FILENAME).read_text())
        if backward is None:
            own = folder / BACKWARD_FILENAME
            backward = own if own.is_file() else None
        if backward is not None:
            pipe.load_backward_weights(backward)
        return pipe

    def load_backward_weights(self, path_or_dict: str | os.PathLike | dict) -> str:
        """Load backward weights (a backward-weights file, or a dict keyed exactly as
        :func:`inbetweening.backward_parameters` names them). Returns the variant."""
        if isinstance(path_or_dict, dict):
            tensors, meta = path_or_dict, {}
        else:
            tensors, meta = backward.load_backward_weights_file(path_or_dict)
        tensors = {k: v.to(self.unet.device, self.unet.dtype) for k, v in tensors.items()}
        variant = backward.set_backward_weights(self.unet, tensors)
        self.backward_metadata = dict(meta)
        return variant

    def save_backward_weights(self, path: str | os.PathLike, overwrite: bool = True,
                              **metadata) -> Path:
        tensors = backward.backward_parameters(self.unet)
        if backward.loaded_variant(self.unet) is None:
            raise InbetweeningError("no backward weights are loaded")
        meta = {"num_frames": self.unet.config.num_frames, **self.backward_metadata, **metadata}
        return backward.save_backward_weights(path, tensors, metadata=meta, overwrite=overwrite)

    # -- steps ---------------------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(width, height) the UNet was configured for."""
        side = self.unet.config.sample_size * self.vae_scale_factor
        if isinstance(side, (tuple, list)):
            return int(side[1]), int(side[0])
        return int(side), int(side)

    def check_inputs(self, height: int, width: int, num_frames: int, method: str,
                     num_inference_steps: int) -> None:
        check_method(method)
        if height % 64 or width % 64 or height <= 0 or width <= 0:
            raise InbetweeningError(f"size {width}x{height} is not a multiple of 64 in both sides")
        trained = self.unet.config.num_frames
        if not 3 <= num_frames <= 2 * trained:
            raise InbetweeningError(
                f"this model takes 3 to {2 * trained} frames (trained on {trained}); got "
                f"{num_frames}. Use several keyframes for longer videos")
        if num_inference_steps < 1:
            raise InbetweeningError("num_inference_steps must be at least 1")

    def preprocess(self, image: ImageInput, height: int, width: int, fit: str) -> torch.Tensor:
        """A keyframe as a (1, 3, height, width) tensor in [-1, 1]: centre-cropped to the output
        aspect ratio and resized (``fit="crop"``), or resized as it is (``fit="stretch"``)."""
        if fit not in ("crop", "stretch"):
            raise InbetweeningError(f"fit must be 'crop' or 'stretch', not {fit!r}")
        mode = "crop" if fit == "crop" else "default"
        return self.video_processor.preprocess(to_pil(image), height=height, width=width,
                                               resize_mode=mode)

    def encode_keyframe(self, image: torch.Tensor, noise_aug_strength: float,
                        generator, device) -> KeyframeCondition:
        """Conditioning for one keyframe. Draws the augmentation noise from ``generator``."""
        embedding = conditioning.clip_embedding(self.image_encoder, self.feature_extractor,
                                                image.to(device))
        noise = randn_tensor(image.shape, generator=generator, device=device, dtype=image.dtype)
        with self._vae_upcast():
            latent = conditioning.image_latent(self.vae, image.to(device), noise_aug_strength,
                                               noise)
        return KeyframeCondition(embedding=embedding, latent=latent.to(embedding.dtype))

    @contextlib.contextmanager
    def _vae_upcast(self):
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
        with self._vae_upcast():
            for a in range(0, z.shape[0], decode_chunk_size):
                chunk = z[a:a + decode_chunk_size].to(self.vae.dtype)
                parts.append(self.vae.decode(chunk, num_frames=chunk.shape[0]).sample.float())
        return torch.cat(parts).unflatten(0, latents.shape[:2])

    @torch.no_grad()
    def __call__(
        self,
        start_image: ImageInput,
        end_image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        reinject_count: int | None = None,
        reinject_fraction: float = 0.5,
        fuse: str = "average",
        method: str = "gi",
        dual_pass: str = "fused",
        max_unet_batch: int | None = None,
        fit: str = "crop",
        decode_chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Generate the video from ``start_image`` to ``end_image``.

        ``reinject_count`` defaults to 5 for the two-direction methods (the published recipe)
        and 0 for ``forward``. ``max_unet_batch`` caps the rows of one UNet call (the fused batch
        is split, forward and backward rows kept together) to save memory; None or 0: one
        call. All noise (keyframe augmentation, initial latent, re-injection) comes from
        ``generator``: a seed gives the same video.
        """
        method = check_method(method)
        dual = is_dual(method)
        if dual and end_image is None:
            raise InbetweeningError(f"method {method!r} needs an end image")
        default_w, default_h = self.default_size()
        height, width = height or default_h, width or default_w
        num_frames = num_frames or self.unet.config.num_frames
        decode_chunk_size = decode_chunk_size or num_frames
        if reinject_count is None:
            reinject_count = 5 if dual else 0
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InbetweeningError(f"output_type must be pil, np, pt or latent, not {output_type!r}")
        self.check_inputs(height, width, num_frames, method, num_inference_steps)
        keyframes = [to_pil(start_image)] + ([to_pil(end_image)] if dual else [])
        check_aspects(keyframes)
        plans = None
        if dual:
            layers = list(attention.temporal_attention_layers(self.unet))
            plans = layer_plans(method, layers, backward.loaded_variant(self.unet))

        device = self._execution_device
        images = [self.preprocess(k, height, width, fit) for k in keyframes]
        conds = [self.encode_keyframe(im, noise_aug_strength, generator, device) for im in images]
        dtype = conds[0].embedding.dtype
        ids = conditioning.added_time_ids(fps, motion_bucket_id, noise_aug_strength, 1,
                                          dtype=dtype, device=device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sigmas = self.scheduler.sigmas.to(device=device, dtype=torch.float32)
        shape = (1, num_frames, self.vae.config.latent_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma

        denoiser = InbetweenDenoiser(
            self.unet, method, conds[0], conds[1] if dual else None, ids,
            guidance_per_frame(num_frames, min_guidance_scale, max_guidance_scale, symmetric=dual),
            fuse_weights(num_frames, fuse), plans, dual_pass=dual_pass, max_rows=max_unet_batch)

        total = count_predictions(num_inference_steps, reinject_count, reinject_fraction)
        with self.progress_bar(total=total) as bar:
            def denoise(x, sigma):
                out = denoiser(x, sigma)
                bar.update()
                return out

            def on_step(i, x):
                if callback_on_step_end is None:
                    return None
                tensors = {"latents": x}
                out = callback_on_step_end(self, i, self.scheduler.timesteps[i],
                                           {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                return (out or {}).get("latents")

            latents = sample_euler(denoise, latents, sigmas, generator=generator,
                                   reinject_count=reinject_count,
                                   reinject_fraction=reinject_fraction, callback=on_step)

        if output_type == "latent":
            frames = latents
        else:
            video = self.decode(latents, decode_chunk_size)  # (1, F, 3, H, W) in [-1, 1]
            frames = self.video_processor.postprocess_video(video.permute(0, 2, 1, 3, 4),
                                                            output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return InbetweenPipelineOutput(frames=frames)
