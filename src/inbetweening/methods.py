"""The inbetweening methods: configurations of one machinery, not copies of it.

=========  ==================================================================================
gi         the paper: backward direction with the forward maps rotated by 180 degrees in every
           temporal self-attention layer and the fine-tuned backward weights. With backward
           weights of the ``no-rotation`` variant (the paper's "w/o RA" ablation) it uses those
           weights (q, k, v, o) and no rotation.
gi-noft    the paper's "w/o FT" ablation: rotated maps in the up blocks only, base weights.
trf        time-reversal fusion (Feng et al. 2024): the backward direction is the plain forward
           model run on the time-flipped video from the end frame; no rotation, base weights.
forward    plain SVD from the start frame; the end frame is not used.
=========  ==================================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .utils import InbetweeningError

if TYPE_CHECKING:  # (imported when used: the method names are needed without torch)
    from .attention import LayerPlan

METHODS = ("gi", "gi-noft", "trf", "forward")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InbetweeningError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def is_dual(method: str) -> bool:
    """Whether the method fuses a forward and a backward direction."""
    return check_method(method) != "forward"


def layer_plans(method: str, layers: list[str], backward_variant: str | None) -> dict[str, LayerPlan]:
    """The backward direction's plan in every temporal self-attention layer for ``method``.

    ``backward_variant`` is the variant of the loaded backward weights (``"rotation"``,
    ``"no-rotation"``) or None when none are loaded.
    """
    from .attention import LayerPlan, is_up_block

    check_method(method)
    if method == "gi":
        if backward_variant is None:
            raise InbetweeningError(
                "method 'gi' needs backward weights (--backward FILE); without them use "
                "'gi-noft' or 'trf'")
        rotate = backward_variant == "rotation"
        return {n: LayerPlan(rotate=rotate, backward_weights=True) for n in layers}
    if method == "gi-noft":
        return {n: LayerPlan(rotate=is_up_block(n), backward_weights=False) for n in layers}
    return {n: LayerPlan(rotate=False, backward_weights=False) for n in layers}
