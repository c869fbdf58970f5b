"""The inbetweening methods: one record each (:class:`Method`), read by the pipeline, the command
line, the app, evaluation and the docs. Adding a method is adding its record here (and, if no
existing kind of sampler runs it, its sampler: see :mod:`inbetweening.runners`).

A method is a *kind* of sampler (how the denoising steps go), a *backward direction* (what the
model does on the time-flipped latent from the end frame) and its own *settings* (the published
ones). The settings of a call come from, lowest first (:func:`resolve_settings`):

1. :data:`BASE_SETTINGS`, what every method shares (SVD's own defaults);
2. the method's settings, and the model folder's recommended settings (``inbetweening.json``,
   e.g. the toy models' step count): for a *tunable* method (GI's sampler) the model's
   recommendation goes over the method's settings, and a recipe (:data:`RECIPES`) over both; for
   the others the method's own (published) settings go over the model's recommendation and
   recipes do not apply (a note says so);
3. what the call sets.

This module imports no deep-learning library, so the command line can list and check methods at
once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from .utils import InbetweeningError

if TYPE_CHECKING:  # (imported when used: the method names are needed without torch)
    from .attention import LayerPlan

# The settings every method shares unless it sets its own: SVD's defaults (guidance 1 to 3, fps
# 7, motion bucket 127, noise augmentation 0.02) and no re-injection.
BASE_SETTINGS = MappingProxyType({
    "num_inference_steps": 50, "min_guidance_scale": 1.0, "max_guidance_scale": 3.0, "fps": 7,
    "motion_bucket_id": 127, "noise_aug_strength": 0.02, "reinject_count": 0,
    "reinject_fraction": 0.5, "reinject_at": "first", "sampler": "euler", "fuse": "average",
    "cfgpp_scale": 1.0, "renoise_scale": 1.0, "keyframe_noise": "shared",
    "keyframe_latent": "mode",
})
# The settings that take one of a few names.
CHOICES = {"keyframe_noise": ("shared", "independent"),
           "keyframe_latent": ("mode", "sample")}
# ViBiD's release (and MPD's, which is built on it): 25 steps (50 path predictions), CFG++ at
# scale 1, a separate augmentation noise for each keyframe, and the last-frame constraint's
# keyframe latents sampled from the VAE's posterior.
VIBID_SETTINGS = {"num_inference_steps": 25, "cfgpp_scale": 1.0,
                  "keyframe_noise": "independent", "keyframe_latent": "sample"}
# The published recipe of the paper (Alg. 2 as released): 50 Euler steps, 5 re-injections on
# each of the first half (175 predictions), the two directions averaged.
GI_SETTINGS = {"num_inference_steps": 50, "reinject_count": 5, "reinject_fraction": 0.5,
               "reinject_at": "first", "sampler": "euler", "fuse": "average"}

# Named recipes for the tunable methods (GI's sampler): settings a call can start from, over the
# model's recommendation, under what the call sets. ``paper`` is the published recipe (175
# predictions). ``balanced`` and ``fast`` were chosen by the recipe study (benchmarks/recipes.py;
# README, "Fewer predictions"): 24 held-out pairs and three sampling seeds in each of three toy
# settings (the ambiguous world, today's world, today's world at 12 frames). ``balanced`` (24
# predictions: 2 re-injections on every other step of 12) was the best 24-prediction recipe on
# the ambiguous world, where recipes differ most, and within the seed spread of the best
# elsewhere; ``fast`` (10 predictions: 7 steps, 1 re-injection on steps 1, 3 and 5) was the best
# of the candidates of at most 10 predictions in every setting.
RECIPES = MappingProxyType({
    "paper": MappingProxyType(GI_SETTINGS),
    "balanced": MappingProxyType({"num_inference_steps": 12, "reinject_count": 2,
                                  "reinject_fraction": 0.5, "reinject_at": "alternate",
                                  "sampler": "euler"}),
    "fast": MappingProxyType({"num_inference_steps": 7, "reinject_count": 1,
                              "reinject_fraction": 0.5, "reinject_at": "alternate",
                              "sampler": "euler"}),
})

# What the backward direction (on the time-flipped latent, from the end frame) is:
#   "finetuned"  GI's fine-tuned backward weights; with weights of the rotation variant it attends
#                with the forward maps rotated by 180 degrees in every temporal layer, with those
#                of the other variants (the ablations) with its own maps;
#   "rotated-up" the base weights with the rotated forward maps in the decoder's (up) blocks only
#                (the paper's "w/o FT");
#   "base"       the base model as it is (time-reversal fusion);
#   None         there is none: one direction from the start frame.
BACKWARD_DIRECTIONS = ("finetuned", "rotated-up", "base", None)


@dataclass(frozen=True)
class Method:
    """One way to inbetween: what the pipeline runs, the command line offers and the docs list."""

    name: str
    label: str  # one line: what it is (the app's menu, --help, the docs)
    kind: str  # which kind of sampler runs it: a key of runners.RUNNERS
    backward: str | None  # see BACKWARD_DIRECTIONS
    settings: Mapping[str, object] = field(default_factory=dict)  # its own (published) settings
    tunable: bool = False  # recipes and a model's recommended settings go over its own settings

    @property
    def dual(self) -> bool:
        """Whether it uses a backward direction (and so the end keyframe)."""
        return self.backward is not None

    @property
    def needs_backward_weights(self) -> bool:
        return self.backward == "finetuned"


_RECORDS = (
    Method("gi", "the paper: GI's fine-tuned backward model with the forward maps rotated by 180 "
           "degrees, the two directions fused at every step with noise re-injection",
           kind="recurrence", backward="finetuned", settings=GI_SETTINGS, tunable=True),
    Method("gi-noft", "the paper's 'w/o FT': rotated maps in the up blocks, no fine-tuning",
           kind="recurrence", backward="rotated-up", settings=GI_SETTINGS, tunable=True),
    Method("trf", "time-reversal fusion (Feng et al. 2024) as its release runs it: linear "
           "fusion, per-direction guidance, 50 steps with jumps back, re-noised at 0.95",
           kind="trf", backward="base",
           settings={"num_inference_steps": 50, "renoise_scale": 0.95}),
    Method("forward", "plain SVD from the first keyframe (the last one is not used): 25 Euler "
           "steps, no re-injection", kind="recurrence", backward=None,
           settings={"num_inference_steps": 25, "reinject_count": 0}),
    Method("trf-avg", "time-reversal fusion's model with GI's sampler (average fusion, "
           "re-injection)", kind="recurrence", backward="base", settings=GI_SETTINGS,
           tunable=True),
    Method("vibid", "ViBiDSampler (Yang et al. 2025): sequential forward and backward steps, "
           "CFG++ and the last-frame constraint, 25 steps", kind="sequential", backward="base",
           settings=VIBID_SETTINGS),
    Method("gi-sequential", "ViBiD's sequential schedule with GI's backward model",
           kind="sequential", backward="finetuned", settings=VIBID_SETTINGS),
    Method("mpd", "motion prior distillation (Jeon et al. 2026) on ViBiD, as its release "
           "(fps id 8)", kind="mpd", backward="base", settings={**VIBID_SETTINGS, "fps": 9}),
)
METHOD_RECORDS: Mapping[str, Method] = MappingProxyType({m.name: m for m in _RECORDS})
METHODS = tuple(METHOD_RECORDS)
# The methods that run GI's fine-tuned backward model (they need backward weights).
BACKWARD_METHODS = tuple(m.name for m in _RECORDS if m.needs_backward_weights)
_RECIPE_METHODS = tuple(m.name for m in _RECORDS if m.tunable)


def method(name: str) -> Method:
    """The record of the method ``name``."""
    if name not in METHOD_RECORDS:
        raise InbetweeningError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHOD_RECORDS[name]


def check_method(name: str) -> str:
    return method(name).name


def is_dual(name: str) -> bool:
    """Whether the method uses a forward and a backward direction."""
    return method(name).dual


def resolve_settings(name: str, given: Mapping | None = None, model: Mapping | None = None,
                     recipe: str | None = None) -> tuple[dict, list[str]]:
    """The settings of a call of method ``name`` (see the module's docstring for the order),
    and notes for the user (a recipe that does not apply). ``given``: what the call sets (None
    values are not set); ``model``: the model folder's recommended settings."""
    record, notes = method(name), []
    if recipe is not None and recipe not in RECIPES:
        raise InbetweeningError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if record.tunable:
        layers = [BASE_SETTINGS, record.settings, model or {}, RECIPES.get(recipe, {})]
    else:
        layers = [BASE_SETTINGS, model or {}, record.settings]
        if recipe is not None:
            notes.append(f"the recipe {recipe!r} is for {', '.join(_RECIPE_METHODS)}; {name} "
                         "runs with its own settings")
    settings: dict = {}
    for layer in layers:
        settings.update(layer)
    settings.update({k: v for k, v in (given or {}).items() if v is not None})
    for key, allowed in CHOICES.items():
        if settings[key] not in allowed:
            raise InbetweeningError(f"{key} must be one of {', '.join(allowed)}, not "
                                    f"{settings[key]!r}")
    return settings, notes


def layer_plans(name: str, model, backward_variant: str | None) -> dict[str, LayerPlan]:
    """The backward direction's plan in every controlled attention layer of ``model`` (its
    backbone's, see :mod:`inbetweening.backbones`) for the method ``name``.

    ``backward_variant`` is the variant of the loaded backward weights (``"rotation"``,
    ``"no-rotation"``, ``"no-rotation-vo"``) or None when none are loaded; only ``rotation``
    attends with the rotated maps.
    """
    from .attention import LayerPlan, controlled_layers, unwrap
    from .backbones import for_model

    record = method(name)
    layers = list(controlled_layers(model))
    if record.backward == "finetuned":
        if backward_variant is None:
            raise InbetweeningError(
                f"method {name!r} needs backward weights (--backward FILE); without them use "
                "'gi-noft' or 'trf'")
        rotate = backward_variant == "rotation"
        return {n: LayerPlan(rotate=rotate, backward_weights=True) for n in layers}
    if record.backward == "rotated-up":
        in_decoder = for_model(unwrap(model)).in_decoder
        return {n: LayerPlan(rotate=in_decoder(n), backward_weights=False) for n in layers}
    return {n: LayerPlan(rotate=False, backward_weights=False) for n in layers}
