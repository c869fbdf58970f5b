"""The sampling options: one typed description of how a video is sampled.

:class:`SamplingOptions` is what the CLI (``interpolate``, ``demo``, ``evaluate``), the web app
and evaluation all build, each from its own inputs, and what they turn into
:class:`~inbetweening.pipeline.InbetweenPipeline` call arguments with
:meth:`SamplingOptions.call_kwargs`: only what was set. The pipeline fills in the rest, the same
way for every caller (:func:`inbetweening.methods.resolve_settings`: the recipe, the model
folder's recommendation, the method's own settings), so a seed gives the same video from the
command line, the app and Python. Each field's ``metadata`` carries its command-line help, so the
command line is derived from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .methods import METHOD_RECORDS, METHODS, RECIPES
from .utils import InbetweeningError

# (kept here and checked against inbetweening.sampling in the tests: this module is torch-free)
SAMPLER_NAMES = ("euler", "heun", "dpmpp-2m")
REINJECT_PLACES = ("first", "middle", "alternate")

FUSES = ("average", "linear")
# The range of each whole-number option: beyond these a run would never end or make no video.
LIMITS = {"frames": (3, 1024), "steps": (1, 1000), "fps": (1, 240), "reinject": (0, 50),
          "max_unet_batch": (1, 1 << 20), "decode_chunk": (1, 1 << 20),
          "motion_bucket_id": (0, 1023)}
MAX_GUIDANCE = 100.0
DUAL_PASSES = ("fused", "reference")
FITS = ("crop", "stretch")
# Sizes are multiples of the VAE's 8 pixels per latent cell (SVD's and the toy models').
SIZE_MULTIPLE = 8


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (width, height), both positive multiples of 8 (a VAE's latent cell); None or ''
    -> None."""
    if text in (None, ""):
        return None
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise InbetweeningError(f"size must look like 1024x576 (width x height), not {text!r}") \
            from None
    if w <= 0 or h <= 0 or w % SIZE_MULTIPLE or h % SIZE_MULTIPLE:
        raise InbetweeningError(f"size {w}x{h} is not a multiple of {SIZE_MULTIPLE} in both "
                                "sides")
    return w, h


def parse_guidance(text: str | None) -> tuple[float, float] | None:
    """'MIN,MAX' -> (min, max) per-frame guidance scales; None or '' -> None."""
    if text in (None, ""):
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise InbetweeningError(f"--guidance takes MIN,MAX (e.g. 1,3), not {text!r}") from None
    return lo, hi


def check_seed(seed: int) -> int:
    """A seed a torch generator takes: 0 to 2**64 - 1."""
    if not 0 <= seed < 2**64:
        raise InbetweeningError(f"a seed must be between 0 and 2**64 - 1, not {seed}")
    return seed


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample a video. ``None``: the model's recommendation, else the pipeline's default."""

    recipe: str | None = field(default=None, metadata=_help(
        "a named parameter set for the methods sampled with GI's sampler (gi, gi-noft, "
        "trf-avg, forward): paper (50 steps, 5 re-injections on half: the published recipe, "
        "175 predictions), balanced (24), fast (10); options given explicitly override it "
        "(default: the model's settings)", choices=tuple(RECIPES)))
    method: str = field(default="gi", metadata=_help(
        "; ".join(f"{m.name}: {m.label}" for m in METHOD_RECORDS.values()) + " (default gi)",
        choices=METHODS))
    frames: int | None = field(default=None, metadata=_help(
        "frames per segment, keyframes included (default: the model's)"))
    steps: int | None = field(default=None, metadata=_help(
        "denoising steps (default: the model's recommendation, else 50)"))
    size: tuple[int, int] | None = field(default=None, metadata=_help(
        "WxH, multiples of 8 (default: the model's; SVD's 1024x576, portrait for a portrait "
        "first keyframe)", parse=parse_size))
    fit: str | None = field(default=None, metadata=_help(
        "crop (default: keyframes centre-cropped to the size's aspect ratio) or stretch",
        choices=FITS))
    fps: int | None = field(default=None, metadata=_help(
        "frame rate of the output and of the UNet's fps conditioning (default 7)"))
    motion_bucket_id: int | None = field(default=None, metadata=_help(
        "SVD's motion conditioning: more motion when higher (default 127)"))
    noise_aug_strength: float | None = field(default=None, metadata=_help(
        "noise added to the keyframes before they condition the model: more freedom when higher "
        "(default 0.02)"))
    guidance: tuple[float, float] | None = field(default=None, metadata=_help(
        "MIN,MAX per-frame guidance (default 1,3; 1,1 turns CFG off)", parse=parse_guidance))
    reinject: int | None = field(default=None, metadata=_help(
        "noise re-injections per step (default 5 for two-direction methods)"))
    reinject_fraction: float | None = field(default=None, metadata=_help(
        "fraction of the steps that get re-injection (default 0.5)"))
    reinject_at: str | None = field(default=None, metadata=_help(
        "which steps get re-injection: first (default, as published), middle, alternate (every "
        "other step)", choices=REINJECT_PLACES))
    sampler: str | None = field(default=None, metadata=_help(
        "euler (default, the paper's), heun (2 predictions a step), dpmpp-2m (DPM-Solver++(2M)); "
        "for gi, gi-noft, trf-avg and forward", choices=SAMPLER_NAMES))
    fuse: str | None = field(default=None, metadata=_help(
        "how the two directions are fused (default average)", choices=FUSES))
    dual_pass: str | None = field(default=None, metadata=_help(
        "fused: one UNet call for both directions (default); reference: the paper's two calls "
        "with explicit maps", choices=DUAL_PASSES))
    max_unet_batch: int | None = field(default=None, metadata=_help(
        "split the fused UNet batch into calls of at most this many rows, to save memory "
        "(default: one call)"))
    decode_chunk: int | None = field(default=None, metadata=_help(
        "frames decoded at once (default: all)"))

    def replace(self, **changes) -> "SamplingOptions":
        return dataclasses.replace(self, **changes)

    def check(self) -> "SamplingOptions":
        """Refuse values no model can take, before any model is loaded; returns self."""
        if self.recipe is not None and self.recipe not in RECIPES:
            raise InbetweeningError(f"unknown recipe {self.recipe!r}; choose from "
                                    f"{', '.join(RECIPES)}")
        if self.method not in METHODS:
            raise InbetweeningError(f"unknown method {self.method!r}; choose from "
                                    f"{', '.join(METHODS)}")
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if value is not None and not lo <= value <= hi:
                raise InbetweeningError(f"{name.replace('_', '-')} must be between {lo} and {hi}, "
                                        f"not {value}")
        if self.noise_aug_strength is not None and not 0 <= self.noise_aug_strength <= 10:
            raise InbetweeningError(f"noise-aug-strength must be between 0 and 10, not "
                                    f"{self.noise_aug_strength}")
        if self.reinject_fraction is not None and not 0 <= self.reinject_fraction <= 1:
            raise InbetweeningError(f"reinject-fraction must be between 0 and 1, not "
                                    f"{self.reinject_fraction}")
        if self.guidance is not None:
            lo, hi = self.guidance
            if not (0 <= lo <= MAX_GUIDANCE and 0 <= hi <= MAX_GUIDANCE):
                raise InbetweeningError(f"guidance scales must be between 0 and {MAX_GUIDANCE}, "
                                        f"not {lo},{hi}")
        for name, allowed in (("fuse", FUSES), ("sampler", SAMPLER_NAMES), ("fit", FITS),
                              ("reinject_at", REINJECT_PLACES), ("dual_pass", DUAL_PASSES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise InbetweeningError(f"{name.replace('_', '-')} must be one of "
                                        f"{', '.join(allowed)}, not {value!r}")
        return self

    def call_kwargs(self) -> dict:
        """InbetweenPipeline keyword arguments: what was set (the recipe by its name), nothing
        else (the pipeline resolves the rest: see the module's docstring)."""
        kw = dict(method=self.method, recipe=self.recipe, num_frames=self.frames,
                  num_inference_steps=self.steps, fps=self.fps, fuse=self.fuse,
                  dual_pass=self.dual_pass, reinject_count=self.reinject,
                  reinject_fraction=self.reinject_fraction, reinject_at=self.reinject_at,
                  sampler=self.sampler, max_unet_batch=self.max_unet_batch,
                  decode_chunk_size=self.decode_chunk, motion_bucket_id=self.motion_bucket_id,
                  noise_aug_strength=self.noise_aug_strength, fit=self.fit)
        if self.size is not None:
            kw["width"], kw["height"] = self.size
        if self.guidance is not None:
            kw["min_guidance_scale"], kw["max_guidance_scale"] = self.guidance
        return {k: v for k, v in kw.items() if v is not None}
