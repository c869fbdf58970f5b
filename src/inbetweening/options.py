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
import math
import numbers
import types
import typing
from dataclasses import dataclass, field

from .methods import METHOD_RECORDS, METHODS, RECIPES
from .utils import InbetweeningError

# (kept here and checked against inbetweening.sampling in the tests: this module is torch-free)
SAMPLER_NAMES = ("euler", "heun", "dpmpp-2m")
REINJECT_PLACES = ("first", "middle", "alternate")

FUSES = ("average", "linear")
DUAL_PASSES = ("fused", "reference")
# Ranges shared by several commands' options (see check_fields): beyond them a run would never
# end, make no video, or not fit in memory.
SEED_RANGE = (0, 2**64 - 1)  # what a torch generator takes
FRAMES_RANGE = (3, 1024)  # frames per segment or clip, keyframes included
STEPS_RANGE = (1, 1000)  # denoising steps
FPS_RANGE = (1, 240)
SIDE_RANGE = (8, 8192)  # each side of a video, in pixels (multiples of SIZE_MULTIPLE)
# Sizes are multiples of the VAE's 8 pixels per latent cell (SVD's and the toy models').
SIZE_MULTIPLE = 8
FITS = ("crop", "stretch")


# == one validation for every command's options =================================================
#
# A dataclass field's ``metadata`` describes its values: ``choices`` (the allowed values) and,
# for numbers, ``range`` = (lo, hi), inclusive unless ``above`` is set (then lo itself is not
# allowed); a tuple field's range holds for each of its numbers. :func:`check_fields` refuses
# anything else, NaN and infinity included, with one line naming the option; the command line
# (inbetweening.commands.args) shows each range in --help.


def scalar_type(hint) -> type | None:
    """What a field annotated ``hint`` holds (int, float, str or bool; for a tuple, what each of
    its items is), or None for anything else. ``X | None`` is taken as ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), None)
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint if hint in (int, float, str, bool) else None


def field_type(cls, f: dataclasses.Field) -> type:
    """int, float, str or bool: the type a dataclass field's value is read as from text (the
    command line, a manifest); a tuple's (a field with its own ``parse``) is str."""
    kind = scalar_type(typing.get_type_hints(cls)[f.name])
    return str if kind is None or _holds_several(f) else kind


def show_number(value) -> str:
    """A number as messages and --help show it: 1,024; 2^64-1; 0.5."""
    if isinstance(value, int) and value >= 1 << 20 and (value & (value + 1) == 0
                                                        or value & (value - 1) == 0):
        k = value.bit_length() - (value & (value - 1) == 0)
        return f"2^{k}" + ("-1" if value & (value + 1) == 0 else "")
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def describe_range(lo, hi, above: bool = False) -> str:
    """'between 3 and 1,024', or 'above 0 and at most 1' (``above``: lo excluded)."""
    return (f"above {show_number(lo)} and at most {show_number(hi)}" if above
            else f"between {show_number(lo)} and {show_number(hi)}")


def check_number(name: str, value, lo, hi, *, above: bool = False, whole: bool = False):
    """``value`` if it is a finite number in the range (a whole one if ``whole``), else a
    one-line InbetweeningError naming the option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InbetweeningError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise InbetweeningError(f"{name} must be a finite number, not {value}")
    if whole and not isinstance(value, numbers.Integral):
        raise InbetweeningError(f"{name} must be a whole number, not {value}")
    if not (lo < value if above else lo <= value) or value > hi:
        raise InbetweeningError(f"{name} must be {describe_range(lo, hi, above)}, not {value}")
    return value


def option_name(f: dataclasses.Field) -> str:
    """How messages name a field: its command-line flag (--reinject-fraction)."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def check_fields(obj):
    """Refuse, with one line, a field of the dataclass instance ``obj`` that its metadata does not
    allow (``choices``, ``range``; see above) or of the wrong kind (a whole number where the
    field is an int, nothing where it is not optional); returns ``obj``."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, meta, hint = getattr(obj, f.name), f.metadata, hints[f.name]
        if value is None:
            if type(None) not in typing.get_args(hint) and hint is not type(None):
                raise InbetweeningError(f"{option_name(f)} must be given")
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise InbetweeningError(f"{option_name(f)} must be one of "
                                    f"{', '.join(map(str, meta['choices']))}, not {value!r}")
        if "range" in meta:
            items = value if isinstance(value, (tuple, list)) else (value,)
            if isinstance(value, (tuple, list)) != _holds_several(f):
                raise InbetweeningError(f"{option_name(f)} must be "
                                        f"{'numbers' if _holds_several(f) else 'a number'}, "
                                        f"not {value!r}")
            for item in items:
                check_number(option_name(f), item, *meta["range"],
                             above=meta.get("above", False), whole=scalar_type(hint) is int)
    return obj


def field_range(cls, name: str) -> tuple:
    """The (lo, hi) range of the dataclass ``cls``'s field ``name`` (what other front ends, the
    ComfyUI nodes among them, show their widgets within)."""
    return next(f.metadata["range"] for f in dataclasses.fields(cls) if f.name == name)


def range_help(f: dataclasses.Field) -> str:
    """A field's range as --help shows it ('' when it has none): ' (3 to 1,024)', ' (over 0,
    up to 1)'."""
    if "range" not in f.metadata:
        return ""
    lo, hi = f.metadata["range"]
    text = (f"over {show_number(lo)}, up to {show_number(hi)}" if f.metadata.get("above")
            else f"{show_number(lo)} to {show_number(hi)}")
    return f" ({text}{' each' if _holds_several(f) else ''})"


def _holds_several(f: dataclasses.Field) -> bool:
    """Whether the field holds a tuple of numbers (each in its range)."""
    return "tuple[" in str(f.type)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (width, height), both positive multiples of 8 (a VAE's latent cell); None ->
    None ('' is refused: an empty value is not the default)."""
    if text is None:
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
    """'MIN,MAX' -> (min, max) per-frame guidance scales; None -> None ('' is refused)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise InbetweeningError(f"--guidance takes MIN,MAX (e.g. 1,3), not {text!r}") from None
    return lo, hi


def check_seed(seed: int) -> int:
    """A seed a torch generator takes: 0 to 2**64 - 1."""
    return check_number("--seed", seed, *SEED_RANGE, whole=True)


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample a video. ``None``: the model's recommendation, else the pipeline's default."""

    recipe: str | None = field(default=None, metadata=_help(
        "a named parameter set for the methods sampled with GI's sampler (gi, gi-noft, "
        "trf-avg): paper (50 steps, 5 re-injections on half: the published recipe, 175 "
        "predictions), balanced (24), fast (10); options given explicitly override it "
        "(default: the model's settings)", choices=tuple(RECIPES)))
    method: str = field(default="gi", metadata=_help(
        "; ".join(f"{m.name}: {m.label}" for m in METHOD_RECORDS.values()) + " (default gi)",
        choices=METHODS))
    frames: int | None = field(default=None, metadata=_help(
        "frames per segment, keyframes included (default: the model's)", range=FRAMES_RANGE))
    steps: int | None = field(default=None, metadata=_help(
        "denoising steps (default: the model's recommendation, else 50)", range=STEPS_RANGE))
    size: tuple[int, int] | None = field(default=None, metadata=_help(
        "WxH, multiples of 8 (default: the model's; SVD's 1024x576, portrait for a portrait "
        "first keyframe); width x height x frames must also fit the machine: on the CPU 4x "
        "the model's usual work, on a GPU its free memory", parse=parse_size,
        range=SIDE_RANGE))
    fit: str | None = field(default=None, metadata=_help(
        "crop (default: keyframes centre-cropped to the size's aspect ratio) or stretch",
        choices=FITS))
    fps: int | None = field(default=None, metadata=_help(
        "frame rate of the output and of the UNet's fps conditioning (default 7)",
        range=FPS_RANGE))
    motion_bucket_id: int | None = field(default=None, metadata=_help(
        "SVD's motion conditioning: more motion when higher (default 127)", range=(0, 1023)))
    noise_aug_strength: float | None = field(default=None, metadata=_help(
        "noise added to the keyframes before they condition the model: more freedom when higher "
        "(default 0.02)", range=(0, 10)))
    guidance: tuple[float, float] | None = field(default=None, metadata=_help(
        "MIN,MAX per-frame guidance (default 1,3; 1,1 turns CFG off)", parse=parse_guidance,
        range=(0, 100)))
    reinject: int | None = field(default=None, metadata=_help(
        "noise re-injections per step (default: the method's; gi: 5, or the model's "
        "recommendation)", range=(0, 50)))
    reinject_fraction: float | None = field(default=None, metadata=_help(
        "fraction of the steps that get re-injection (default 0.5)", range=(0, 1)))
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
        "(default: one call)", range=(1, 1 << 20)))
    decode_chunk: int | None = field(default=None, metadata=_help(
        "frames decoded at once (default: all)", range=(1, 1 << 20)))

    def replace(self, **changes) -> "SamplingOptions":
        return dataclasses.replace(self, **changes)

    def check(self) -> "SamplingOptions":
        """Refuse values no model can take (each field's choices and range, see
        :func:`check_fields`), before any model is loaded; returns self."""
        return check_fields(self)

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
