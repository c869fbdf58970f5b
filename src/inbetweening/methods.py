"""The inbetweening methods: configurations of one machinery, not copies of it.

=========  ==================================================================================
gi         the paper: backward direction with the forward maps rotated by 180 degrees in every
           temporal self-attention layer and the fine-tuned backward weights. With backward
           weights of the ``no-rotation`` variant (the paper's "w/o RA" ablation) it uses those
           weights (q, k, v, o) and no rotation; with ``no-rotation-vo`` (v, o) no rotation
           either.
gi-noft    the paper's "w/o FT" ablation: rotated maps in the up blocks only, base weights.
trf        time-reversal fusion (Feng et al. 2024): the backward direction is the plain forward
           model run on the time-flipped video from the end frame; no rotation, base weights.
forward    plain SVD from the start frame; the end frame is not used.
=========  ==================================================================================

The peers (:mod:`inbetweening.peers`), each with its own sampler (see :data:`SAMPLING`):

=============  ==============================================================================
trf            TRF as its authors' release runs it (``peers.sample_trf``): linear fusion
               weights over frames, per-direction (unsymmetrised) guidance, Euler with jumps
               back (RePaint-style re-noising). Base model in both directions.
trf-avg        what ``trf`` meant before: GI's sampler (Euler with per-step recurrence,
               average fusion, symmetrised guidance) with the base model in both directions.
vibid          ViBiDSampler (Yang et al. 2025): sequential forward and backward steps with one
               re-noise in between, no fusion; CFG++ and the last-frame constraint. Base model.
gi-sequential  ViBiD's sequential schedule with GI's backward direction (fine-tuned backward
               weights, rotated maps); needs backward weights like ``gi``.
mpd            Motion Prior Distillation (Jeon et al. 2026) on ViBiD: in the first steps the
               backward estimate is distilled from the forward one instead of denoised from the
               end frame. Base model.
=============  ==============================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .utils import InbetweeningError

if TYPE_CHECKING:  # (imported when used: the method names are needed without torch)
    from .attention import LayerPlan

# The peers added beside the first four (``trf`` is a peer too: its sampler is TRF's own).
PEER_METHODS = ("trf-avg", "vibid", "gi-sequential", "mpd")
METHODS = ("gi", "gi-noft", "trf", "forward") + PEER_METHODS
# The methods that run GI's fine-tuned backward model (they need backward weights).
BACKWARD_METHODS = ("gi", "gi-sequential")

# The sampler of each method: "recurrence" (sampling.SAMPLERS over InbetweenDenoiser, with noise
# re-injection), "trf" (peers.sample_trf over InbetweenDenoiser with linear fusion and
# unsymmetrised guidance), "sequential" (peers.sample_sequential over two path denoisers) or
# "mpd" (peers.sample_mpd over the same two).
SAMPLING = {"gi": "recurrence", "gi-noft": "recurrence", "trf-avg": "recurrence",
            "forward": "recurrence", "trf": "trf", "vibid": "sequential",
            "gi-sequential": "sequential", "mpd": "mpd"}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InbetweeningError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def is_dual(method: str) -> bool:
    """Whether the method uses a forward and a backward direction."""
    return check_method(method) != "forward"


def layer_plans(method: str, layers: list[str], backward_variant: str | None) -> dict[str, LayerPlan]:
    """The backward direction's plan in every temporal self-attention layer for ``method``.

    ``backward_variant`` is the variant of the loaded backward weights (``"rotation"``,
    ``"no-rotation"``, ``"no-rotation-vo"``) or None when none are loaded; only ``rotation``
    attends with the rotated maps.
    """
    from .attention import LayerPlan, is_up_block

    check_method(method)
    if method in BACKWARD_METHODS:
        if backward_variant is None:
            raise InbetweeningError(
                f"method {method!r} needs backward weights (--backward FILE); without them use "
                "'gi-noft' or 'trf'")
        rotate = backward_variant == "rotation"
        return {n: LayerPlan(rotate=rotate, backward_weights=True) for n in layers}
    if method == "gi-noft":
        return {n: LayerPlan(rotate=is_up_block(n), backward_weights=False) for n in layers}
    return {n: LayerPlan(rotate=False, backward_weights=False) for n in layers}
