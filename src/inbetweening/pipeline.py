"""InbetweenPipeline: the video between two keyframes, on any diffusers SVD / SVD-XT model.

The steps of ``__call__``: check inputs -> preprocess keyframes -> condition on each end (CLIP
embedding, noise-augmented VAE latent, added time ids) -> sample (dual-directional Euler with noise
re-injection, see :mod:`inbetweening.sampling`) -> decode in chunks -> frames. Several videos in
one call (a batch of keyframe pairs, ``num_videos_per_prompt``) are sampled one after another,
each from its own generator.

A folder written by :meth:`InbetweenPipeline.save_pretrained` holds the components, the backward
weights (``backward.safetensors``), the model's recommended call arguments (``inbetweening.json``)
and a one-line module (``inbetween_pipeline.py``) that ``model_index.json`` names, so that
diffusers' own ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` builds this
class too.
"""

# No ``from __future__ import annotations``: diffusers reads the component classes from the
# annotations of ``__init__`` (``from_pipe``, its type check when loading), and older diffusers
# versions read them as they stand, unevaluated.

import contextlib
import contextvars
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

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
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
finally:
    _transformers_logging.set_verbosity(_verbosity)

from diffusers import (
    AutoencoderKLTemporalDecoder, DiffusionPipeline, EulerDiscreteScheduler,
    UNetSpatioTemporalConditionModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from . import attention, backward, conditioning, peers
from .methods import SAMPLING, check_method, is_dual, layer_plans
from .sampling import (
    REINJECT_PLACES, SAMPLERS, InbetweenDenoiser, KeyframeCondition, fuse_weights,
    guidance_per_frame, predictions,
)
from .toy.autoencoder import PatchAutoencoder
from .utils import InbetweeningError

BACKWARD_FILENAME = backward.WEIGHTS_FILENAME  # a model folder may carry its backward weights
# ... and recommended call arguments (e.g. the toy model's step count), as a JSON object.
DEFAULTS_FILENAME = "inbetweening.json"
# The module a saved folder holds for diffusers' generic loader, and its whole text.
PIPELINE_MODULE = "inbetween_pipeline"
PIPELINE_MODULE_TEXT = (
    '"""Lets diffusers\' DiffusionPipeline.from_pretrained(this folder, trust_remote_code=True)\n'
    'build the InbetweenPipeline of the installed inbetweening package."""\n\n'
    "from inbetweening.pipeline import InbetweenPipeline  # noqa: F401\n")
# SVD and SVD-XT: their UNet configs say 768 px (sample_size 96 with the VAE's factor 8), but
# Stability trained and runs them at 1024x576 (width, height).
SVD_CONFIG_SIDE = 768
SVD_SIZE = (1024, 576)
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor
# Loading with backward=None takes the folder's own backward weights (see from_pretrained).
_FOLDER_BACKWARD = contextvars.ContextVar("inbetweening_folder_backward", default=True)


@dataclass
class InbetweenPipelineOutput(BaseOutput):
    """``frames``: one entry per video: a list of PIL images each, an (N, F, H, W, 3) array in
    [0, 1], an (N, F, 3, H, W) tensor in [0, 1] or (N, F, C, h, w) latents, by ``output_type``."""

    frames: list | np.ndarray | torch.Tensor


def to_pil(image: ImageInput) -> PIL.Image.Image:
    """A keyframe as an RGB PIL image. Arrays are (H, W, 3) uint8 or float in [0, 1]; tensors
    are (3, H, W) in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (3, 4):
            raise InbetweeningError("a keyframe tensor must be (3, H, W), or (B, 3, H, W) for a "
                                    f"batch, not {tuple(image.shape)}")
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise InbetweeningError(f"a keyframe array must be (H, W, 3), not {image.shape}")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return PIL.Image.fromarray(image[..., :3])
    raise InbetweeningError(f"a keyframe must be a PIL image, array or tensor, not {type(image)}")


def keyframe_batch(images) -> list[PIL.Image.Image]:
    """Keyframes as RGB PIL images: one keyframe (see :func:`to_pil`), a batch ((B, 3, H, W)
    tensor in [0, 1], (B, H, W, 3) array) or a list of keyframes."""
    batch = isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4
    if batch or isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise InbetweeningError("an empty batch of keyframes")
    return [to_pil(im) for im in items]


def keyframe_pairs(start_image, end_image) -> list[tuple]:
    """(start, end) PIL keyframes of each prompt; ``end`` is None without an end image. A batch
    of one start or end keyframe goes with every keyframe of the other batch."""
    starts = keyframe_batch(start_image)
    ends = keyframe_batch(end_image) if end_image is not None else [None]
    n = max(len(starts), len(ends))
    if {len(starts), len(ends)} - {1, n}:
        raise InbetweeningError(f"{len(starts)} start and {len(ends)} end keyframes: give as "
                                "many of each, or one of either")
    return [(starts[i % len(starts)], ends[i % len(ends)]) for i in range(n)]


def video_generators(generator, videos: int) -> list:
    """One generator per video. A list must hold exactly one per video; a single generator (or
    None) serves every video in turn, so the first video equals a one-video run."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != videos:
            raise InbetweeningError(f"{len(generator)} generators for {videos} videos: give one "
                                    "per video, or a single generator")
        return list(generator)
    return [generator] * videos


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


def _dtype_argument() -> str:
    """The name this diffusers takes the load dtype under without a deprecation warning: diffusers
    renamed ``torch_dtype`` to ``dtype`` (and resolves the old name with ``_resolve_dtype``)."""
    try:
        from diffusers.utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _dtype_kwargs(kwargs: dict) -> dict:
    """``from_pretrained`` keyword arguments with the dtype (given as ``dtype`` or
    ``torch_dtype``) under the name this diffusers knows without a warning."""
    kwargs = dict(kwargs)
    given = [v for v in (kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
             if v is not None]
    if len(given) > 1:
        raise InbetweeningError("give the dtype once: dtype or torch_dtype, not both")
    if given:
        kwargs[_dtype_argument()] = given[0]
    return kwargs


def _finish_model_index(folder: Path) -> None:
    """Point a saved ``model_index.json`` at the folder's pipeline module, as diffusers' loader
    wants a class from outside the library ([module, class]), and name the feature extractor by
    the class every transformers version has: without torchvision transformers 5 saves
    ``CLIPImageProcessorPil``, which ``CLIPImageProcessor`` falls back to when loading anyway."""
    import transformers

    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index["_class_name"] = [PIPELINE_MODULE, InbetweenPipeline.__name__]
    library, name = index.get("feature_extractor") or (None, None)
    base = str(name).removesuffix("Pil")
    if library == "transformers" and base != name and hasattr(transformers, base):
        index["feature_extractor"] = [library, base]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class _RunSettings:
    """One call's sampling settings, shared by its videos (built once in ``__call__``)."""

    sampler: str
    reinject_count: int
    reinject_fraction: float
    reinject_at: str
    num_frames: int
    min_guidance_scale: float
    max_guidance_scale: float
    plans: object  # methods.layer_plans
    dual_pass: str  # "fused" or "reference"
    max_unet_batch: int | None
    cfgpp_scale: float | None
    make_denoiser: Callable  # (start, end, added_time_ids) -> the recurrence methods' denoiser


class _Interrupted(Exception):
    """Raised inside sampling when ``pipe._interrupt`` is set; carries the latent reached."""

    def __init__(self, latents: torch.Tensor):
        super().__init__("interrupted")
        self.latents = latents


class InbetweenPipeline(DiffusionPipeline):
    """Generative inbetweening (Alg. 2 of the paper) on an SVD model's components.

    Takes the same components as ``StableVideoDiffusionPipeline`` (so ``from_pipe`` turns one
    into the other); the backward weights are held by the UNet's temporal attention processors
    (see :mod:`inbetweening.backward`). The UNet may be ``torch.compile``-d.
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    # typing.Union, not X | Y: older diffusers versions know only the former.
    def __init__(self, vae: Union[AutoencoderKLTemporalDecoder, PatchAutoencoder],  # noqa: UP007
                 image_encoder: CLIPVisionModelWithProjection,
                 unet: UNetSpatioTemporalConditionModel, scheduler: EulerDiscreteScheduler,
                 feature_extractor: CLIPImageProcessor):
        super().__init__()
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet,
                              scheduler=scheduler, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae_scale_factor(self.vae.config)
        self.video_processor = VideoProcessor(do_resize=True,
                                              vae_scale_factor=self.vae_scale_factor)
        self.backward_metadata: dict[str, str] = {}
        self.defaults: dict = {}  # recommended __call__ arguments of this model (CLI, app, demo)
        self._guidance_scale, self._num_timesteps, self._interrupt = None, 0, False
        self._num_predictions = 0
        attention.install(self.unet)

    # -- what diffusers' callbacks read ----------------------------------------------------------
    @property
    def guidance_scale(self) -> float | None:
        """The guidance scale of the current (or last) call: its ``max_guidance_scale``."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The sampling steps of the current (or last) call."""
        return self._num_timesteps

    @property
    def num_predictions(self) -> int:
        """UNet predictions per video of the current (or last) call: one fused prediction covers
        both directions (the cost unit of the recipes)."""
        return self._num_predictions

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (in a callback, or from another thread) to stop the
        call after the current step; see ``__call__``."""
        return self._interrupt

    # -- loading and saving ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backward=None, **kwargs):
        """Load an SVD model (local diffusers folder or hub id) and, if given, backward weights
        (a file path or a dict of tensors). A local model folder holding ``backward.safetensors``
        (like the bundled toy model, or a folder :meth:`save_pretrained` wrote) gets those weights
        when ``backward`` is not given, and its ``inbetweening.json`` as :attr:`defaults`. The
        dtype may be given as ``dtype`` or ``torch_dtype``: it is passed on under the name the
        installed diffusers takes without a deprecation warning."""
        _import_own_components(Path(str(pretrained_model_name_or_path)))
        token = _FOLDER_BACKWARD.set(backward is None)
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **_dtype_kwargs(kwargs))
        finally:
            _FOLDER_BACKWARD.reset(token)
        if backward is not None:
            pipe.load_backward_weights(backward)
        return pipe

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """diffusers reads ``model_index.json`` here. A saved folder names this class as [its
        module file, class] for diffusers' generic loader; loading through this class itself
        needs no code from the folder, so the pair reads as the class's own name."""
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name") if isinstance(config, dict) else None
        if isinstance(name, (list, tuple)) and list(name)[:1] == [PIPELINE_MODULE]:
            config["_class_name"] = cls.__name__
        return config

    def register_to_config(self, **kwargs):
        """diffusers' config update. Every diffusers loader (``from_pretrained`` of this class or
        of ``DiffusionPipeline``, ``from_pipe``) records its source here as ``_name_or_path``
        once the pipeline is built: a local folder's extras are loaded then."""
        super().register_to_config(**kwargs)
        if kwargs.get("_name_or_path") is not None:
            self._load_extras(Path(str(kwargs["_name_or_path"])))

    def _load_extras(self, folder: Path) -> None:
        """A model folder's recommended call arguments, and its backward weights unless some are
        loaded already (``from_pipe``) or ``from_pretrained`` was given others."""
        if (folder / DEFAULTS_FILENAME).is_file():
            self.defaults = json.loads((folder / DEFAULTS_FILENAME).read_text())
        weights = folder / BACKWARD_FILENAME
        if (_FOLDER_BACKWARD.get() and weights.is_file()
                and backward.loaded_variant(self.unet) is None):
            self.load_backward_weights(weights)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' save, plus what makes the folder this model (see the module docstring):
        the backward weights when some are loaded (else a stale ``backward.safetensors`` is
        removed), :attr:`defaults` as ``inbetweening.json``, and the pipeline module that
        ``model_index.json`` names. Loads back with :meth:`from_pretrained`, or with
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``."""
        if kwargs.get("push_to_hub"):
            raise InbetweeningError("save to a folder, then upload it: push_to_hub would upload "
                                    "the folder before its backward weights are written")
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        weights = folder / BACKWARD_FILENAME
        if backward.loaded_variant(self.unet) is not None:
            self.save_backward_weights(weights)
        elif weights.is_file():
            weights.unlink()
        (folder / DEFAULTS_FILENAME).write_text(json.dumps(self.defaults, indent=2) + "\n")
        (folder / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_MODULE_TEXT)
        _finish_model_index(folder)

    def load_backward_weights(self, path_or_dict: str | os.PathLike | dict,
                              variant: str | None = None) -> str:
        """Load backward weights (a backward-weights file, or a dict keyed exactly as
        :func:`inbetweening.backward_parameters` names them) of ``variant`` (None: the one the
        file's metadata names, else as the tensor names tell). Returns the variant."""
        if isinstance(path_or_dict, dict):
            tensors, meta = path_or_dict, {}
        else:
            tensors, meta = backward.load_backward_weights_file(path_or_dict)
        tensors = {k: v.to(self.unet.device, self.unet.dtype) for k, v in tensors.items()}
        variant = backward.set_backward_weights(attention.unwrap(self.unet), tensors,
                                                variant or meta.get("variant"))
        self.backward_metadata = dict(meta)
        return variant

    def save_backward_weights(self, path: str | os.PathLike, overwrite: bool = True,
                              **metadata) -> Path:
        """Write the loaded backward weights (with their metadata and ``metadata``) to ``path``."""
        unet = attention.unwrap(self.unet)
        if backward.loaded_variant(unet) is None:
            raise InbetweeningError("no backward weights are loaded")
        tensors = backward.backward_parameters(unet)
        meta = {"num_frames": unet.config.num_frames, **self.backward_metadata, **metadata}
        return backward.save_backward_weights(path, tensors, variant=backward.loaded_variant(unet),
                                              metadata=meta, overwrite=overwrite)

    # -- steps ---------------------------------------------------------------------------------
    def default_size(self, image=None) -> tuple[int, int]:
        """(width, height) to generate at when the call gives none. An SVD / SVD-XT UNet (whose
        config says 768 px: sample_size 96 with the VAE's factor 8; or no size) runs at the
        1024x576 it was trained at: 576x1024 when ``image`` (the start keyframe, or a batch of
        them: the first decides) is portrait, 1024x576 when it is landscape, square or not
        given. Other models: the size their UNet's config gives (64x64 for the toy model)."""
        side, f = self.unet.config.sample_size, self.vae_scale_factor
        if isinstance(side, (tuple, list)):
            return int(side[1]) * f, int(side[0]) * f
        if side is not None and int(side) * f != SVD_CONFIG_SIDE:
            return int(side) * f, int(side) * f
        first = keyframe_batch(image)[0] if image is not None else None
        portrait = first is not None and first.height > first.width
        return SVD_SIZE[::-1] if portrait else SVD_SIZE

    def check_inputs(self, height: int, width: int, num_frames: int, method: str,
                     num_inference_steps: int, sampler: str = "euler",
                     reinject_at: str = "first") -> None:
        """The size, frame count, method, step count, sampler and re-injection placement of a
        call."""
        check_method(method)
        if sampler not in SAMPLERS:
            raise InbetweeningError(f"unknown sampler {sampler!r}; choose one of "
                                    f"{', '.join(SAMPLERS)}")
        if reinject_at not in REINJECT_PLACES:
            raise InbetweeningError(f"reinject_at must be one of {', '.join(REINJECT_PLACES)}, "
                                    f"not {reinject_at!r}")
        if height % 64 or width % 64 or height <= 0 or width <= 0:
            raise InbetweeningError(f"size {width}x{height} is not a multiple of 64 in both sides")
        trained = self.unet.config.num_frames
        if not 3 <= num_frames <= 2 * trained:
            raise InbetweeningError(
                f"this model takes 3 to {2 * trained} frames (trained on {trained}); got "
                f"{num_frames}. Use several keyframes for longer videos")
        if num_inference_steps < 1:
            raise InbetweeningError("num_inference_steps must be at least 1")

    def _check_call(self, output_type: str, tensor_inputs, num_videos_per_prompt) -> None:
        """The call arguments diffusers' pipelines share."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InbetweeningError(f"output_type must be pil, np, pt or latent, not {output_type!r}")
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise InbetweeningError(
                f"callback_on_step_end_tensor_inputs: no tensor {', '.join(map(repr, unknown))} "
                f"here; this pipeline passes {', '.join(self._callback_tensor_inputs)}")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise InbetweeningError("num_videos_per_prompt must be a whole number of at least 1, "
                                    f"not {num_videos_per_prompt!r}")

    def preprocess(self, image: ImageInput, height: int, width: int, fit: str) -> torch.Tensor:
        """A keyframe as a (1, 3, height, width) tensor in [-1, 1]: centre-cropped to the output
        aspect ratio and resized (``fit="crop"``), or resized as it is (``fit="stretch"``)."""
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
        with self._vae_upcast():
            latent = conditioning.image_latent(self.vae, image.to(device), noise_aug_strength,
                                               noise)
        return KeyframeCondition(embedding=embedding, latent=latent.to(embedding.dtype))

    def keyframe_conditions(self, keyframes, height: int, width: int, fit: str,
                            noise_aug_strength: float, generator, device) -> tuple[list, list]:
        """Conditioning for one video's keyframes (start, and end if not None), and the
        preprocessed keyframe images. As the published code does, ONE augmentation noise, of a
        keyframe's shape and drawn from ``generator``, is added to every keyframe."""
        images = [self.preprocess(k, height, width, fit) for k in keyframes if k is not None]
        noise = randn_tensor(images[0].shape, generator=generator, device=device,
                             dtype=images[0].dtype)
        return images, [self.encode_keyframe(im, noise_aug_strength, noise, device)
                        for im in images]

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

    def _frames(self, latents: list[torch.Tensor], output_type: str, decode_chunk_size: int):
        """Each video's (1, F, C, h, w) latent -> the output of ``output_type``, video by video."""
        if output_type == "latent":
            return torch.cat(latents)
        video = torch.cat([self.decode(z, decode_chunk_size) for z in latents])
        return self.video_processor.postprocess_video(video.permute(0, 2, 1, 3, 4),
                                                      output_type=output_type)

    def _step_callback(self, callback_on_step_end, tensor_inputs):
        """diffusers' ``callback_on_step_end`` as the sampler's ``callback(i, x)``: what it returns
        under ``"latents"`` replaces the latent. A set :attr:`interrupt` stops sampling there."""
        def on_step(i, x):
            out = None
            if callback_on_step_end is not None:
                tensors = {"latents": x}
                out = (callback_on_step_end(self, i, self.scheduler.timesteps[i],
                                            {k: tensors[k] for k in tensor_inputs}) or {})
                out = out.get("latents")
            if self._interrupt:
                raise _Interrupted(x if out is None else out)
            return out
        return on_step

    def _sample(self, run, x, bar) -> tuple[torch.Tensor, bool]:
        """One video's latent from ``x`` by ``run(wrap, x)`` (a sampler call whose denoisers are
        passed through ``wrap``: a progress-bar tick per prediction and the :attr:`interrupt`
        check); also whether :attr:`interrupt` stopped it (then the latent is the one reached, at
        the noise level it had)."""
        def wrap(denoiser):
            def denoise(x, sigma):
                if self._interrupt:  # set from another thread
                    raise _Interrupted(x)
                out = denoiser(x, sigma)
                bar.update()
                return out
            return denoise

        try:
            return run(wrap, x), False
        except _Interrupted as stop:
            return stop.latents, True

    def _sampler_run(self, method: str, images, conds, ids, sigmas, generator, on_step,
                     settings: _RunSettings):
        """``run(wrap, x)`` for :meth:`_sample`: the method's sampler (``methods.SAMPLING``) over
        its denoisers for one video's keyframe conditions ``conds`` (of the preprocessed keyframes
        ``images``) and time ids ``ids``."""
        kind = SAMPLING[method]
        if kind == "recurrence":
            denoiser = settings.make_denoiser(conds[0], conds[1] if len(conds) > 1 else None,
                                              ids)
            sample = SAMPLERS[settings.sampler]
            return lambda wrap, x: sample(
                wrap(denoiser), x, sigmas, generator=generator,
                reinject_count=settings.reinject_count,
                reinject_fraction=settings.reinject_fraction,
                reinject_at=settings.reinject_at, callback=on_step)
        parts = peers.denoisers_for(
            method, self.unet, conds[0], conds[1], ids, num_frames=settings.num_frames,
            min_guidance_scale=settings.min_guidance_scale,
            max_guidance_scale=settings.max_guidance_scale, plans=settings.plans,
            dual_pass=settings.dual_pass, max_rows=settings.max_unet_batch,
            cfgpp_scale=settings.cfgpp_scale)
        start_latent = end_latent = None
        if kind in ("sequential", "mpd"):  # the last-frame constraints: the clean keyframes
            with self._vae_upcast():
                start_latent, end_latent = (peers.clean_latent(self.vae, im.to(sigmas.device))
                                            for im in images)
        return lambda wrap, x: peers.sample_peer(
            method, parts, x, sigmas, generator=generator, start_latent=start_latent,
            end_latent=end_latent, wrap=wrap, callback=on_step)

    def _video_inputs(self, start_image, end_image, num_videos_per_prompt, generator):
        """Keyframe pairs (end None for one-direction methods) and generators, one per video:
        ``num_videos_per_prompt`` videos per pair, in order. Pairs of other aspect ratios are
        refused."""
        pairs = keyframe_pairs(start_image, end_image)
        for pair in pairs:
            check_aspects([k for k in pair if k is not None])
        pairs = [p for p in pairs for _ in range(num_videos_per_prompt)]
        return pairs, video_generators(generator, len(pairs))

    def _layer_plans(self, method: str, dual: bool):
        """What each temporal layer does in the backward direction (None for one direction)."""
        if not dual:
            return None
        layers = list(attention.temporal_attention_layers(self.unet))
        return layer_plans(method, layers, backward.loaded_variant(self.unet))

    def _sigmas(self, num_inference_steps: int, device) -> torch.Tensor:
        """The scheduler's sigma schedule for ``num_inference_steps`` (its timesteps set too)."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        return self.scheduler.sigmas.to(device=device, dtype=torch.float32)

    def _given_latents(self, latents: torch.Tensor | None, videos: int, shape) -> list:
        """The ``latents`` argument split into one (1, F, C, h, w) latent per video (None each
        when not given); a latent of another shape is refused."""
        if latents is None:
            return [None] * videos
        want, f = (videos, *shape[1:]), self.vae_scale_factor
        if tuple(latents.shape) != want:
            raise InbetweeningError(f"latents must have the shape {want} (videos, frames, "
                                    f"channels, height / {f}, width / {f}), not "
                                    f"{tuple(latents.shape)}")
        return list(latents.split(1))

    @torch.no_grad()
    def __call__(
        self,
        start_image: ImageInput | list,
        end_image: ImageInput | list | None = None,
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
        reinject_at: str = "first",
        sampler: str = "euler",
        fuse: str = "average",
        method: str = "gi",
        cfgpp_scale: float = peers.VIBID_CFGPP_SCALE,
        dual_pass: str = "fused",
        max_unet_batch: int | None = None,
        fit: str = "crop",
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Generate the video from ``start_image`` to ``end_image``.

        Keyframes: PIL images, (H, W, 3) arrays, (3, H, W) tensors in [0, 1], or batches
        ((B, 3, H, W) tensors, lists); a batch of one start or end keyframe goes with every
        keyframe of the other. ``num_videos_per_prompt`` videos are made per keyframe pair, one
        after another: ``frames[j]``. ``height``/``width`` default to :meth:`default_size` of the
        start keyframe. ``reinject_count`` defaults to 5 for the two-direction methods (the
        published recipe) and 0 for ``forward``; ``reinject_at`` places the re-injected steps
        (``"first"``: the first ``int(steps * reinject_fraction)``, as published; ``"middle"``;
        ``"alternate"``: every other step). ``sampler``: ``"euler"`` (the paper's), ``"heun"``
        (two predictions a step) or ``"dpmpp-2m"`` (DPM-Solver++(2M), one a step), each with the
        same re-injection. The per-frame guidance is linspace(min, max);
        with ``fuse="average"`` two-direction methods use it symmetrised, ``(g + g.flip) / 2``,
        as the published code does (its ``weighted_average``, ``fuse="linear"``, does not).
        ``max_unet_batch`` caps the rows of one UNet call (the fused batch is split, forward and
        backward rows kept together) to save memory; None or 0: one call.

        The peer methods have their own samplers (:mod:`inbetweening.peers`; ``methods.SAMPLING``):
        ``trf`` (linear fusion, per-direction guidance, its release's jumps back), ``vibid``,
        ``gi-sequential`` and ``mpd`` (sequential steps guided with CFG++ at ``cfgpp_scale``,
        ViBiD's 1.0; ``min/max_guidance_scale`` do not apply to these three). ``sampler``,
        ``reinject_*`` and ``fuse`` apply only to the methods sampled with re-injection (``gi``,
        ``gi-noft``, ``trf-avg``, ``forward``) and are ignored by the peers.

        All noise of a video (one keyframe augmentation noise shared by both keyframes, the
        initial latent unless ``latents`` gives it, re-injection) comes from its generator: a
        list holds one per video; a single generator serves the videos in turn (the first video
        equals a one-video run). ``latents``: (videos, F, C, h, w), scaled by the scheduler's
        initial sigma as in diffusers' SVD pipeline. ``callback_on_step_end(pipe, i, t,
        {"latents": x})`` runs after each step of each video; a returned ``"latents"`` replaces
        the latent, and setting ``pipe._interrupt = True`` stops the call there: the output then
        holds the videos begun, the last one at the step reached.
        """
        method = check_method(method)
        dual = is_dual(method)
        if dual and end_image is None:
            raise InbetweeningError(f"method {method!r} needs an end image")
        self._check_call(output_type, callback_on_step_end_tensor_inputs, num_videos_per_prompt)
        pairs, generators = self._video_inputs(start_image, end_image if dual else None,
                                               num_videos_per_prompt, generator)
        default_w, default_h = self.default_size(pairs[0][0])
        height, width = height or default_h, width or default_w
        num_frames = num_frames or self.unet.config.num_frames
        reinject_count = (5 if dual else 0) if reinject_count is None else reinject_count
        self.check_inputs(height, width, num_frames, method, num_inference_steps, sampler,
                          reinject_at)
        plans = self._layer_plans(method, dual)
        device = self._execution_device
        sigmas = self._sigmas(num_inference_steps, device)
        shape = (1, num_frames, self.vae.config.latent_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        given = self._given_latents(latents, len(pairs), shape)
        guidance = guidance_per_frame(num_frames, min_guidance_scale, max_guidance_scale,
                                      symmetric=dual and fuse == "average")
        settings = _RunSettings(
            sampler=sampler, reinject_count=reinject_count, reinject_fraction=reinject_fraction,
            reinject_at=reinject_at, num_frames=num_frames, min_guidance_scale=min_guidance_scale,
            max_guidance_scale=max_guidance_scale, plans=plans, dual_pass=dual_pass,
            max_unet_batch=max_unet_batch, cfgpp_scale=cfgpp_scale,
            make_denoiser=functools.partial(  # (start, end, added_time_ids) -> denoiser
                InbetweenDenoiser, self.unet, method, guidance=guidance, plans=plans,
                fuse=fuse_weights(num_frames, fuse), dual_pass=dual_pass,
                max_rows=max_unet_batch))
        self._guidance_scale, self._interrupt = max_guidance_scale, False
        on_step = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if SAMPLING[method] == "recurrence":
            total = predictions(sampler, num_inference_steps, reinject_count, reinject_fraction,
                                reinject_at=reinject_at)
        else:
            total = peers.peer_predictions(method, num_inference_steps)
        self._num_predictions = total
        out = []
        with self.progress_bar(total=total * len(pairs)) as bar:
            for pair, g, z in zip(pairs, generators, given):
                images, conds = self.keyframe_conditions(pair, height, width, fit,
                                                         noise_aug_strength, g, device)
                ids = conditioning.added_time_ids(fps, motion_bucket_id, noise_aug_strength, 1,
                                                  dtype=conds[0].embedding.dtype, device=device)
                run = self._sampler_run(method, images, conds, ids, sigmas, g, on_step, settings)
                x, stopped = self._sample(run, self.initial_latent(shape, g, z, device), bar)
                out.append(x)
                if stopped:
                    break
        frames = self._frames(out, output_type, decode_chunk_size or num_frames)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return InbetweenPipelineOutput(frames=frames)
