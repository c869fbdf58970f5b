"""InbetweenPipeline: the video between two keyframes, on any diffusers SVD / SVD-XT model.

The steps of ``__call__``: resolve the settings (the call's, a recipe's, the model's
recommendation, the method's own: :func:`inbetweening.methods.resolve_settings`) -> check inputs ->
preprocess keyframes -> condition on each end (CLIP embedding, noise-augmented VAE latent, added
time ids) -> sample (the method's kind of sampler, :mod:`inbetweening.runners`; GI's is
dual-directional Euler with noise re-injection) -> decode in chunks -> frames. Several videos in
one call (a batch of keyframe pairs, ``num_videos_per_prompt``) are sampled one after another,
each from its own generator. Loading and saving (backward weights, recommended settings,
diffusers' generic loader) is :class:`inbetweening.folders.ModelFolder`'s.
"""

# No ``from __future__ import annotations``: diffusers reads the component classes from the
# annotations of ``__init__`` (``from_pipe``, its type check when loading), and older diffusers
# versions read them as they stand, unevaluated.

from dataclasses import dataclass
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
from diffusers.utils import BaseOutput, logging
from diffusers.video_processor import VideoProcessor

from . import attention, backward, conditioning, methods, peers, runners
from .encoding import KeyframeCodec
from .folders import ModelFolder
from .inputs import keyframe_batch, video_inputs
from .memory import memory_preset
from .sampling import REINJECT_PLACES, SAMPLERS
from .toy.autoencoder import PatchAutoencoder
from .utils import InbetweeningError

# SVD and SVD-XT: their UNet configs say 768 px (sample_size 96 with the VAE's factor 8), but
# Stability trained and runs them at 1024x576 (width, height).
SVD_CONFIG_SIDE = 768
SVD_SIZE = (1024, 576)
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor
logger = logging.get_logger(__name__)
# The call's arguments that are settings (resolved by methods.resolve_settings).
SETTINGS = (*methods.BASE_SETTINGS, "num_frames", "height", "width")


@dataclass
class InbetweenPipelineOutput(BaseOutput):
    """``frames``: one entry per video: a list of PIL images each, an (N, F, H, W, 3) array in
    [0, 1], an (N, F, 3, H, W) tensor in [0, 1] or (N, F, C, h, w) latents, by ``output_type``."""

    frames: list | np.ndarray | torch.Tensor


def vae_scale_factor(config) -> int:
    """Pixels per latent cell: 2 ** (blocks - 1) for diffusers' VAEs, ``patch_size`` for the toy
    model's patch autoencoder. ``config``: a model config or its dict."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if get("patch_size"):
        return int(get("patch_size"))
    return 2 ** (len(get("block_out_channels")) - 1)


def check_call_arguments(output_type: str, tensor_inputs, allowed, num_videos_per_prompt) -> None:
    """The call arguments diffusers' pipelines share."""
    if output_type not in ("pil", "np", "pt", "latent"):
        raise InbetweeningError(f"output_type must be pil, np, pt or latent, not {output_type!r}")
    unknown = [k for k in tensor_inputs if k not in allowed]
    if unknown:
        raise InbetweeningError(
            f"callback_on_step_end_tensor_inputs: no tensor {', '.join(map(repr, unknown))} "
            f"here; this pipeline passes {', '.join(allowed)}")
    if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
        raise InbetweeningError("num_videos_per_prompt must be a whole number of at least 1, "
                                f"not {num_videos_per_prompt!r}")


def split_latents(latents: torch.Tensor | None, videos: int, shape, factor: int) -> list:
    """The ``latents`` argument split into one (1, F, C, h, w) latent per video (None each when
    not given); a latent of another shape is refused. ``factor``: the VAE's scale factor."""
    if latents is None:
        return [None] * videos
    want = (videos, *shape[1:])
    if tuple(latents.shape) != want:
        raise InbetweeningError(f"latents must have the shape {want} (videos, frames, channels, "
                                f"height / {factor}, width / {factor}), not "
                                f"{tuple(latents.shape)}")
    return list(latents.split(1))


@dataclass(frozen=True)
class _Plan:
    """What a call will do, worked out and checked before any work (see ``_plan``)."""

    settings: dict
    record: methods.Method
    pairs: list
    generators: list
    latents: list
    plans: dict | None
    sigmas: torch.Tensor
    shape: tuple


class _Interrupted(Exception):
    """Raised inside sampling when ``pipe._interrupt`` is set; carries the latent reached."""

    def __init__(self, latents: torch.Tensor):
        super().__init__("interrupted")
        self.latents = latents


class _Steps:
    """One video's step control: the progress bar, diffusers' ``callback_on_step_end`` as the
    sampler's ``callback(i, x)`` (what it returns under ``"latents"`` replaces the latent) and the
    pipeline's :attr:`~InbetweenPipeline.interrupt`, checked after each step and before each
    prediction (it may be set from another thread)."""

    def __init__(self, pipe, callback_on_step_end, tensor_inputs, bar):
        self.pipe, self.callback, self.tensor_inputs, self.bar = (
            pipe, callback_on_step_end, tensor_inputs, bar)
        self.reached = -1

    def on_step(self, i: int, x: torch.Tensor):
        """The bar moves on each step first reached (a sampler that goes back, as TRF's does,
        redoes steps without counting them again)."""
        if i > self.reached:
            self.bar.update(i - self.reached)
            self.reached = i
        out = None
        if self.callback is not None:
            tensors = {"latents": x}
            out = (self.callback(self.pipe, i, self.pipe.scheduler.timesteps[i],
                                 {k: tensors[k] for k in self.tensor_inputs}) or {})
            out = out.get("latents")
        if self.pipe.interrupt:
            raise _Interrupted(x if out is None else out)
        return out

    def wrap(self, denoiser):
        def denoise(x, sigma):
            if self.pipe.interrupt:
                raise _Interrupted(x)
            return denoiser(x, sigma)
        return denoise

    def sample(self, run, x) -> tuple[torch.Tensor, bool]:
        """One video's latent from ``x`` by ``run(wrap, x)``, and whether the interrupt stopped
        it (then the latent is the one reached, at the noise level it had)."""
        try:
            return run(self.wrap, x), False
        except _Interrupted as stop:
            return stop.latents, True


class InbetweenPipeline(ModelFolder, KeyframeCodec, DiffusionPipeline):
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
        self.defaults: dict = {}  # the model's recommended settings (its inbetweening.json)
        self._guidance_scale, self._num_timesteps, self._interrupt = None, 0, False
        self._num_predictions = 0
        self.memory = "default"  # memory.apply_memory's setting: row cap, decode chunk
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
        """Denoiser predictions per video of the current (or last) call: one fused prediction
        covers both directions (the cost unit of the recipes)."""
        return self._num_predictions

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (in a callback, or from another thread) to stop the
        call after the current step; see ``__call__``."""
        return self._interrupt

    # -- settings and checks ---------------------------------------------------------------------
    def call_settings(self, method: str | None = None, recipe: str | None = None, image=None,
                      **given) -> tuple[dict, list[str]]:
        """The settings a call with these arguments runs with, and notes for the user: the
        method (default: the model's recommendation, else ``gi``) and
        :func:`~inbetweening.methods.resolve_settings` of what is ``given`` (None: not given;
        other arguments of a call, e.g. ``dual_pass``, are passed over)
        over the recipe over this model's :attr:`defaults`, with the frame count (the UNet's)
        and the size (:meth:`default_size` of ``image``, the start keyframe) filled in."""
        name = method or self.defaults.get("method", "gi")
        given = {k: v for k, v in given.items() if k in SETTINGS}
        settings, notes = methods.resolve_settings(name, given, self.defaults, recipe)
        settings["method"] = name
        width, height = self.default_size(image)
        for key, value in (("num_frames", self.unet.config.num_frames), ("width", width),
                           ("height", height)):
            if settings.get(key) is None:
                settings[key] = value
        return settings, notes

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
        methods.method(method)
        if sampler not in SAMPLERS:
            raise InbetweeningError(f"unknown sampler {sampler!r}; choose one of "
                                    f"{', '.join(SAMPLERS)}")
        if reinject_at not in REINJECT_PLACES:
            raise InbetweeningError(f"reinject_at must be one of {', '.join(REINJECT_PLACES)}, "
                                    f"not {reinject_at!r}")
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise InbetweeningError(f"size {width}x{height} is not a multiple of {f} (the VAE's "
                                    "pixels per latent cell) in both sides")
        trained = self.unet.config.num_frames
        if not 3 <= num_frames <= 2 * trained:
            raise InbetweeningError(
                f"this model takes 3 to {2 * trained} frames (trained on {trained}); got "
                f"{num_frames}. Use several keyframes for longer videos")
        if num_inference_steps < 1:
            raise InbetweeningError("num_inference_steps must be at least 1")

    def _job(self, record, settings: dict, images, conds, sigmas, generator, plans, on_step,
             **pass_) -> runners.Job:
        """The runner's pieces for one video of ``record`` from its preprocessed keyframe
        ``images`` and their conditions ``conds``."""
        device = conds[0].embedding.device
        ids = conditioning.added_time_ids(settings["fps"], settings["motion_bucket_id"],
                                          settings["noise_aug_strength"], 1,
                                          dtype=conds[0].embedding.dtype, device=device)
        clean = None
        if runners.KINDS[record.kind].clean_latents:  # the last-frame constraints
            sampled = generator if settings["keyframe_latent"] == "sample" else None
            with self.vae_upcast():
                clean = tuple(peers.clean_latent(self.vae, im.to(device), sampled)
                              for im in images)
        return runners.Job(
            model=self.unet, method=record, settings=settings, start=conds[0],
            end=conds[1] if len(conds) > 1 else None, ids=ids, sigmas=sigmas,
            generator=generator, plans=plans, clean_latents=clean, callback=on_step, **pass_)

    def _sigmas(self, num_inference_steps: int, device) -> torch.Tensor:
        """The scheduler's sigma schedule for ``num_inference_steps`` (its timesteps set too)."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        return self.scheduler.sigmas.to(device=device, dtype=torch.float32)

    def _videos(self, plan: _Plan, fit, dual_pass, max_rows, callback, tensor_inputs) -> list:
        """Each video's final latent, one after another (until the interrupt)."""
        s, record, device = plan.settings, plan.record, self._execution_device
        self._guidance_scale, self._interrupt = s["max_guidance_scale"], False
        self._num_predictions = runners.predictions_per_video(record, s)
        out = []
        with self.progress_bar(total=s["num_inference_steps"] * len(plan.pairs)) as bar:
            bar.set_description(f"{record.name}, steps")
            for pair, g, z in zip(plan.pairs, plan.generators, plan.latents):
                images, conds = self.keyframe_conditions(
                    pair, s["height"], s["width"], fit, s["noise_aug_strength"], g, device,
                    shared_noise=s["keyframe_noise"] == "shared")
                steps = _Steps(self, callback, tensor_inputs, bar)
                job = self._job(record, s, images, conds, plan.sigmas, g, plan.plans,
                                steps.on_step, dual_pass=dual_pass, max_rows=max_rows)
                x, stopped = steps.sample(runners.KINDS[record.kind].run(job),
                                          self.initial_latent(plan.shape, g, z, device))
                out.append(x)
                if stopped:
                    break
        return out

    def _plan(self, start_image, end_image, image, method, recipe, given: dict,
              num_videos_per_prompt: int, generator, latents, output_type,
              tensor_inputs) -> _Plan:
        """The call's settings, keyframe pairs, generators and sampling schedule, with every
        argument checked (before any work)."""
        if image is not None and start_image is not None:
            raise InbetweeningError("give the start keyframe once: start_image or image")
        start_image = start_image if start_image is not None else image
        if start_image is None:
            raise InbetweeningError("no start keyframe given (start_image, or image)")
        s, notes = self.call_settings(method, recipe, start_image, **given)
        for note in notes:
            logger.warning(note)
        record = methods.method(s["method"])
        if record.dual and end_image is None:
            raise InbetweeningError(f"method {record.name!r} needs an end image")
        check_call_arguments(output_type, tensor_inputs, self._callback_tensor_inputs,
                             num_videos_per_prompt)
        pairs, generators = video_inputs(start_image, end_image if record.dual else None,
                                         num_videos_per_prompt, generator)
        self.check_inputs(s["height"], s["width"], s["num_frames"], record.name,
                          s["num_inference_steps"], s["sampler"], s["reinject_at"])
        plans = (methods.layer_plans(record.name, self.unet, backward.loaded_variant(self.unet))
                 if record.dual else None)
        shape = (1, s["num_frames"], self.vae.config.latent_channels,
                 s["height"] // self.vae_scale_factor, s["width"] // self.vae_scale_factor)
        latents = split_latents(latents, len(pairs), shape, self.vae_scale_factor)
        sigmas = self._sigmas(s["num_inference_steps"], self._execution_device)
        return _Plan(s, record, pairs, generators, latents, plans, sigmas, shape)

    @torch.no_grad()
    def __call__(
        self, start_image: ImageInput | list | None = None,
        end_image: ImageInput | list | None = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
        num_inference_steps: int | None = None, min_guidance_scale: float | None = None,
        max_guidance_scale: float | None = None, fps: int | None = None,
        motion_bucket_id: int | None = None, noise_aug_strength: float | None = None,
        reinject_count: int | None = None, reinject_fraction: float | None = None,
        reinject_at: str | None = None, sampler: str | None = None, fuse: str | None = None,
        method: str | None = None, recipe: str | None = None, cfgpp_scale: float | None = None,
        renoise_scale: float | None = None, keyframe_noise: str | None = None,
        keyframe_latent: str | None = None, dual_pass: str = "fused",
        max_unet_batch: int | None = None, fit: str = "crop",
        decode_chunk_size: int | None = None, num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None, output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",), return_dict: bool = True,
        image: ImageInput | list | None = None,
    ):
        """Generate the video from ``start_image`` (or ``image``, SVD's name) to ``end_image``.

        Keyframes: PIL images, (H, W, 3) arrays, (3, H, W) tensors in [0, 1], or batches; a batch
        of one start or end keyframe goes with every keyframe of the other;
        ``num_videos_per_prompt`` videos per pair, one after another: ``frames[j]``.

        The settings (``height`` to ``keyframe_latent``) left at None are resolved by
        :meth:`call_settings`, as the command line and the app resolve them: a ``recipe``
        (``paper``, ``balanced``, ``fast``), the model's recommendation (:attr:`defaults`), the
        ``method``'s own settings (``gi``, the paper, by default; see
        :data:`inbetweening.methods.METHOD_RECORDS`), SVD's defaults. ``reinject_count``
        re-injections on ``int(steps * reinject_fraction)`` steps placed by ``reinject_at``
        (``first``, as published; ``middle``; ``alternate``); ``sampler``: ``euler`` (the
        paper's), ``heun`` or ``dpmpp-2m``; per-frame guidance linspace(min, max), symmetrised
        under ``fuse="average"`` as published; ``renoise_scale``: TRF's re-noising;
        ``keyframe_noise``: ``shared`` (one augmentation noise for both keyframes, as GI
        publishes) or ``independent``; ``keyframe_latent``: ``mode`` or ``sample`` (the
        last-frame constraint's keyframe latents). ``dual_pass``: ``fused`` (one UNet call for both
        directions) or ``reference`` (the paper's two calls with explicit maps);
        ``max_unet_batch`` caps the rows of a UNet call, ``decode_chunk_size`` the frames decoded
        at once (None: those of :attr:`memory`, :mod:`inbetweening.memory`; by default all).

        All noise of a video (one keyframe augmentation noise shared by both keyframes, the
        initial latent unless ``latents`` gives it, re-injection) comes from its generator (a
        list: one per video). ``callback_on_step_end(pipe, i, t, {"latents": x})`` runs after
        each step; a returned ``"latents"`` replaces the latent, and ``pipe._interrupt = True``
        stops the call there (the output holds the videos begun).
        """
        given = {k: v for k, v in locals().items() if k in SETTINGS}
        plan = self._plan(start_image, end_image, image, method, recipe, given,
                          num_videos_per_prompt, generator, latents, output_type,
                          callback_on_step_end_tensor_inputs)
        preset = memory_preset(self.memory)
        out = self._videos(plan, fit, dual_pass, preset.max_unet_batch if max_unet_batch is None
                           else max_unet_batch, callback_on_step_end,
                           callback_on_step_end_tensor_inputs)
        frames = self.frames(out, output_type, decode_chunk_size or preset.decode_chunk
                             or plan.settings["num_frames"])
        self.maybe_free_model_hooks()
        return InbetweenPipelineOutput(frames=frames) if return_dict else (frames,)
