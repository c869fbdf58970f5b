"""The two nodes: a loader (an SVD model with its backward weights) and a sampler (the video
between keyframes). ComfyUI glue only: loading, options, the sampling call and every check are
the ``inbetweening`` package's, the same as ``inbetween interpolate`` runs, so a workflow gives
the CLI's frames for the same model, settings and seed."""

from __future__ import annotations

import contextlib
import os
import threading

import comfy.model_management as mm
import comfy.utils
import folder_paths
import numpy as np
import torch

from inbetweening import media
from inbetweening.inputs import check_aspects, keyframe_batch
from inbetweening.keyframes import interpolate, layout
from inbetweening.loading import load_pipeline, parse_dtype
from inbetweening.methods import METHODS
from inbetweening.options import RECIPES, SamplingOptions, field_range, parse_size
from inbetweening.locate import NAMED_MODELS
from inbetweening.utils import InbetweeningError

CATEGORY = "Inbetweening"
MAX_GUIDANCE = field_range(SamplingOptions, "guidance")[1]
MODEL_TYPE = "INBETWEEN_MODEL"
# Backward-weights files live in ComfyUI's models/inbetweening (and wherever extra_model_paths.yaml
# puts "inbetweening"); "auto" takes the model folder's own backward.safetensors, if any.
WEIGHTS_FOLDER = "inbetweening"
AUTO = "auto"
MODEL_RECIPE = "model"  # no recipe: the model's recommended settings
PRECISIONS = (AUTO, "fp32", "fp16", "bf16")


def register_weights_folder() -> None:
    """models/inbetweening as a folder_paths entry listing .safetensors files."""
    folder_paths.add_model_folder_path(WEIGHTS_FOLDER,
                                       os.path.join(folder_paths.models_dir, WEIGHTS_FOLDER))
    paths, extensions = folder_paths.folder_names_and_paths[WEIGHTS_FOLDER]
    extensions = set(extensions) | {".safetensors"}
    folder_paths.folder_names_and_paths[WEIGHTS_FOLDER] = (paths, extensions)


def diffusers_models() -> dict[str, str]:
    """Name (the path under models/diffusers) -> folder, for every diffusers model folder there;
    whether it is an SVD model is checked when it loads."""
    found = {}
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for folder, _dirs, files in os.walk(root, followlinks=True):
            if "model_index.json" in files:
                found.setdefault(os.path.relpath(folder, root).replace(os.sep, "/"), folder)
    return found


def model_choices() -> list[str]:
    """The bundled toy models first, then the diffusers folders (one named like a bundled model is
    not listed: the name means the bundled model)."""
    return list(NAMED_MODELS) + sorted(set(diffusers_models()) - set(NAMED_MODELS))


def model_source(name: str) -> str:
    """The folder of the model chosen by name."""
    if name in NAMED_MODELS:
        return str(NAMED_MODELS[name])
    folders = diffusers_models()
    if name not in folders:
        raise InbetweeningError(f"no model {name!r} in models/diffusers")
    return folders[name]


def precision_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: fp16 where ComfyUI would run a model in fp16 on ``device`` (a GPU that does it well,
    unless --force-fp32), else fp32; otherwise the dtype named."""
    if name == AUTO:
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    return parse_dtype(name, device)


class InbetweenModelLoader:
    """An SVD / SVD-XT model (a diffusers folder in models/diffusers, or a bundled toy model) with
    its backward weights, kept on ComfyUI's offload device until a sampler runs it."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a Stable Video Diffusion model for generative inbetweening: a diffusers "
                   "SVD or SVD-XT folder from models/diffusers, or a bundled toy model.")

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        weights = [AUTO] + folder_paths.get_filename_list(WEIGHTS_FOLDER)
        return {"required": {
            "model": (model_choices(), {"tooltip": (
                "A diffusers SVD / SVD-XT folder in models/diffusers, or a bundled toy model: "
                "toy, toy-ambiguous (tiny models of a synthetic world, for trying the nodes).")}),
            "backward_weights": (weights, {"default": AUTO, "tooltip": (
                "Backward-motion weights (a .safetensors file in models/inbetweening); auto: the "
                "model folder's own backward.safetensors, if it has one. Needed by gi, "
                "gi-sequential and mpd.")}),
            "precision": (list(PRECISIONS), {"default": AUTO, "tooltip": (
                "auto: fp16 on a GPU that runs it well, fp32 on the CPU.")}),
        }}

    def load(self, model: str, backward_weights: str, precision: str):
        backward = (None if backward_weights == AUTO
                    else folder_paths.get_full_path_or_raise(WEIGHTS_FOLDER, backward_weights))
        dtype = precision_dtype(precision, mm.get_torch_device())
        pipe = load_pipeline(model_source(model), backward, mm.unet_offload_device(), dtype,
                             quiet=True, allow_random=False)
        return (pipe,)


def keyframes_of(start: torch.Tensor, end: torch.Tensor | None) -> list:
    """The keyframes of IMAGE batches ((B, H, W, C) in [0, 1]): the start batch, then the end
    batch."""
    batches = [start] + ([end] if end is not None else [])
    return [im for b in batches for im in keyframe_batch(b.detach().cpu().float().numpy())]


def sampling_options(method, recipe, steps, frames, width, height, fps, min_guidance,
                     max_guidance, motion_bucket, noise_augmentation) -> SamplingOptions:
    """The node's widgets as checked options; 0 (and the recipe "model") leave a setting to the
    recipe or the model, as an option left out of the CLI does."""
    if (width == 0) != (height == 0):
        raise InbetweeningError(f"give both width and height, or 0 for both (the model's size), "
                                f"not {width}x{height}")
    return SamplingOptions(
        method=method, recipe=None if recipe == MODEL_RECIPE else recipe, steps=steps or None,
        frames=frames or None, size=parse_size(f"{width}x{height}") if width else None,
        fps=fps or None, guidance=(min_guidance, max_guidance), motion_bucket_id=motion_bucket,
        noise_aug_strength=noise_augmentation).check()


def progress_callbacks(segments: int):
    """``on_segment`` and ``callback_on_step_end`` that drive ComfyUI's progress bar (the steps of
    all segments) and honour its Cancel at the end of a step: the pipeline is told to stop
    (``pipe._interrupt``, its documented way), and no further segment starts."""
    bar = comfy.utils.ProgressBar(segments)
    where = {"segment": 0}

    def on_segment(i: int, n: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        where["segment"] = i

    def on_step(pipe, i, t, tensors):
        if mm.processing_interrupted():
            pipe._interrupt = True
            return {}
        steps = pipe.num_timesteps
        bar.update_absolute(where["segment"] * steps + min(i + 1, steps), segments * steps)
        return {}

    return on_segment, on_step


@contextlib.contextmanager
def cancel_within_a_prediction(pipe, poll: float = 0.05):
    """Cancel also between the UNet predictions of a step (a step of the published recipe makes
    six): a thread keeps passing ComfyUI's interrupt flag to ``pipe._interrupt``, which the
    pipeline checks before each prediction (and resets when a segment starts)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll):
            if mm.processing_interrupted():
                pipe._interrupt = True

    watcher = threading.Thread(target=watch, name="inbetween-cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


class InbetweenSampler:
    """The video between keyframes (Generative Inbetweening's dual-directional sampling, or a
    peer method), as ``inbetween interpolate`` makes it."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = ("The frames, keyframes included (8-bit values, as the CLI writes them).",
                       "The frame rate, for CreateVideo / SaveVideo.")
    FUNCTION = "sample"
    DESCRIPTION = ("Generates the frames between keyframes with Stable Video Diffusion: start and "
                   "end images, or a batch of several keyframes (one segment per neighbouring "
                   "pair), optionally looping back to the first.")

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Inbetween Model Loader."}),
            "start": ("IMAGE", {"tooltip": (
                "The first keyframe, or a batch of keyframes in order.")}),
            "method": (list(METHODS), {"default": "gi", "tooltip": (
                "gi: the paper (needs backward weights); gi-noft: no fine-tuning; trf: "
                "time-reversal fusion; forward: plain SVD from the first keyframe; trf-avg, vibid, "
                "gi-sequential, mpd: the peers.")}),
            "recipe": ([MODEL_RECIPE] + list(RECIPES), {"default": MODEL_RECIPE, "tooltip": (
                "model: the model's recommended settings; paper: the published recipe (175 "
                "predictions); balanced (24); fast (10). Steps set below override it.")}),
            **_whole("steps", 0, "Denoising steps; 0: the recipe's or the model's."),
            **_whole("frames", 0, "Frames per segment, keyframes included; 0: the model's."),
            **_whole("width", 0, "Output width, a multiple of 8; 0 (with height 0): the "
                     "model's size.", hi=8192, step=8),
            **_whole("height", 0, "Output height, a multiple of 8; 0 (with width 0): the "
                     "model's size.", hi=8192, step=8),
            "min_guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": MAX_GUIDANCE,
                                       "step": 0.1, "tooltip": "Guidance at the first frame."}),
            "max_guidance": ("FLOAT", {"default": 3.0, "min": 0.0, "max": MAX_GUIDANCE,
                                       "step": 0.1, "tooltip": "Guidance at the last frame."}),
            **_whole("motion_bucket", 127, "SVD's motion conditioning (more: more motion).",
                     lo=0, hi=255),
            "noise_augmentation": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 1.0,
                                             "step": 0.01, "tooltip": (
                                                 "Noise added to the keyframes' conditioning.")}),
            **_whole("fps", 0, "Frame rate (also conditions SVD); 0: the model's (7)."),
            "loop": ("BOOLEAN", {"default": False, "tooltip": (
                "Go back to the first keyframe at the end: a seamless loop.")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "control_after_generate": True,
                             "tooltip": "The same seed gives the same frames."}),
        }, "optional": {
            "end": ("IMAGE", {"tooltip": "The last keyframe (or a batch of more keyframes)."}),
        }}

    def sample(self, model, start, method, recipe, steps, frames, width, height, min_guidance,
               max_guidance, motion_bucket, noise_augmentation, fps, loop, seed, end=None):
        options = sampling_options(method, recipe, steps, frames, width, height, fps,
                                   min_guidance, max_guidance, motion_bucket, noise_augmentation)
        images = keyframes_of(start, end)
        segments = len(layout(images, loop).pairs)
        check_aspects(images)
        on_segment, on_step = progress_callbacks(segments)
        mm.unload_all_models()  # ComfyUI's models make room for this one
        mm.soft_empty_cache()
        model.to(mm.get_torch_device())
        try:
            with cancel_within_a_prediction(model):
                video = interpolate(model, images, options, seed=seed, loop=loop,
                                    on_segment=on_segment, callback_on_step_end=on_step)
        finally:
            model.to(mm.unet_offload_device())
            mm.soft_empty_cache()
        mm.throw_exception_if_processing_interrupted()
        frames_8bit = torch.from_numpy(np.stack(media.as_uint8(video.frames)))
        return (frames_8bit.to(mm.intermediate_device()).float() / 255.0, float(video.fps))


def _whole(name: str, default: int, tooltip: str, lo: int = 0, hi: int | None = None,
           step: int = 1) -> dict:
    """An INT widget whose range is the option's (its SamplingOptions field's), with 0 for "not
    set"."""
    top = hi if hi is not None else field_range(SamplingOptions, name)[1]
    return {name: ("INT", {"default": default, "min": lo, "max": top, "step": step,
                           "tooltip": tooltip})}


register_weights_folder()

NODE_CLASS_MAPPINGS = {"InbetweenModelLoader": InbetweenModelLoader,
                       "InbetweenSampler": InbetweenSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"InbetweenModelLoader": "Inbetween Model Loader",
                              "InbetweenSampler": "Inbetween Sampler"}
