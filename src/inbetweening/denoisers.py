"""Denoisers: ``denoise(x, sigma)`` for one video latent x (1, F, C, h, w), made of model calls.

What the samplers (:mod:`inbetweening.sampling`, :mod:`inbetweening.peers`) call. Every model call
goes through the model's backbone (:mod:`inbetweening.backbones`), and the two directions of a
method are predicted in one of two passes (:func:`predict_dual`):

``fused``      one call for both: the forward rows (from the start frame) then the backward rows
               (the time-flipped latent, from the end frame); in every controlled layer the
               backward rows follow their plan (:mod:`inbetweening.attention`), e.g. attend with
               the forward rows' queries and keys flipped in time: the forward map rotated by 180
               degrees, never materialised. ``max_rows`` splits it into calls of at most that many
               rows, a forward row and its backward row kept together.
``reference``  the paper literally: a forward call that records its softmax maps, then a backward
               call that uses them rotated. The oracle the fused pass is held to.

:class:`InbetweenDenoiser` fuses the two directions' clean estimates (GI, TRF);
:class:`PlainPath` and :class:`RotatedBackward` are the path denoisers of the sequential methods,
``denoise(x, sigma) -> (guided, unconditional)``.
"""

from __future__ import annotations

import torch

from . import attention
from .backbones import Rows, for_model
from .conditioning import KeyframeCondition

DUAL_PASSES = ("fused", "reference")


def guidance_per_frame(num_frames: int, min_scale: float, max_scale: float,
                       symmetric: bool) -> torch.Tensor | None:
    """SVD's per-frame guidance, linspace(min, max) over frames; None when guidance is off
    (max <= 1). For two directions, the published recipe uses (g + g.flip) / 2 for both."""
    if max_scale <= 1.0:
        return None
    g = torch.linspace(min_scale, max_scale, num_frames)
    return (g + g.flip(0)) / 2 if symmetric else g


def fuse_weights(num_frames: int, fuse: str) -> torch.Tensor:
    """Per-frame weight of the forward direction: 0.5 ('average') or linspace(1, 0) ('linear')."""
    if fuse == "average":
        return torch.full((num_frames,), 0.5)
    if fuse == "linear":
        return torch.linspace(1.0, 0.0, num_frames)
    raise ValueError(f"fuse must be 'average' or 'linear', not {fuse!r}")


def guide(d: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided, unconditional) clean estimates from those of a direction's rows, [unconditional,
    conditional] (``scale``: a float or a per-frame tensor) or [conditional] (``scale`` None: both
    are the conditional estimate)."""
    if scale is None:
        return d, d
    u, c = d[:1], d[1:]
    if isinstance(scale, torch.Tensor):
        scale = scale.to(d.device).view(1, -1, 1, 1, 1)
    return u + scale * (c - u), u


def predict_plain(model, x: torch.Tensor, sigma: torch.Tensor, rows: Rows,
                  max_rows: int | None = None) -> torch.Tensor:
    """The model's raw predictions for x (N, F, C, h, w) with every layer as it is, in calls of
    at most ``max_rows`` rows."""
    backbone, step = for_model(model), max_rows or len(rows)
    with attention.phase(model, "plain"):
        return torch.cat([backbone.call(model, x[a:a + step], sigma, rows[a:a + step])
                          for a in range(0, len(rows), step)])


def predict_dual(model, xf: torch.Tensor, xb: torch.Tensor, sigma: torch.Tensor, rows_f: Rows,
                 rows_b: Rows, plans: dict[str, attention.LayerPlan], dual_pass: str = "fused",
                 max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw predictions of the forward rows xf and the backward rows xb (the time-flipped latent)
    in the pass ``dual_pass`` (see the module's docstring)."""
    backbone = for_model(model)
    if dual_pass == "reference":
        with attention.phase(model, "record", plans):
            pf = backbone.call(model, xf, sigma, rows_f)
        with attention.phase(model, "inject", plans):
            pb = backbone.call(model, xb, sigma, rows_b)
        return pf, pb
    if dual_pass != "fused":
        raise ValueError(f"dual_pass must be one of {', '.join(DUAL_PASSES)}, not {dual_pass!r}")
    n = len(rows_f)
    step = n if not max_rows else max(1, max_rows // 2)
    pf, pb = [], []
    with attention.phase(model, "fused", plans):
        for a in range(0, n, step):
            s = slice(a, a + step)
            p = backbone.call(model, torch.cat([xf[s], xb[s]]), sigma, rows_f[s] + rows_b[s])
            pf.append(p[:p.shape[0] // 2])
            pb.append(p[p.shape[0] // 2:])
    return torch.cat(pf), torch.cat(pb)


class InbetweenDenoiser:
    """``denoise(x, sigma)``: the fused clean estimate of one video latent x (1, F, C, h, w).

    The forward direction from ``start``, the backward one from ``end`` on the time-flipped
    latent (none when ``end`` is None: then it is the forward estimate), each with per-frame
    guidance ``guidance`` (None: off); the backward estimate is flipped back and the two are
    fused with the forward weight ``fuse`` per frame. ``plans``, ``dual_pass``, ``max_rows``: see
    :func:`predict_dual`.
    """

    def __init__(self, model, start: KeyframeCondition, end: KeyframeCondition | None,
                 added_time_ids: torch.Tensor, guidance: torch.Tensor | None,
                 fuse: torch.Tensor, plans: dict[str, attention.LayerPlan] | None,
                 dual_pass: str = "fused", max_rows: int | None = None):
        if dual_pass not in DUAL_PASSES:
            raise ValueError(f"dual_pass must be 'fused' or 'reference', not {dual_pass!r}")
        self.model, self.backbone = model, for_model(model)
        self.guidance, self.fuse, self.plans = guidance, fuse, plans
        self.dual_pass, self.max_rows = dual_pass, max_rows
        self.rows = [self.backbone.rows(c, added_time_ids, guidance is not None)
                     for c in (start, end) if c is not None]

    @property
    def dual(self) -> bool:
        return len(self.rows) == 2

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = len(self.rows[0])
        xs = [x.expand(n, -1, -1, -1, -1)]
        if self.dual:
            xs.append(x.flip(1).expand(n, -1, -1, -1, -1))
            preds = predict_dual(self.model, *xs, sigma, *self.rows, self.plans, self.dual_pass,
                                 self.max_rows)
        else:
            preds = [predict_plain(self.model, xs[0], sigma, self.rows[0], self.max_rows)]
        estimates = [guide(self.backbone.from_prediction(xd, sigma, p), self.guidance)[0]
                     for xd, p in zip(xs, preds)]
        if not self.dual:
            return estimates[0]
        w = self.fuse.to(x.device).view(1, -1, 1, 1, 1)
        return w * estimates[0] + (1 - w) * estimates[1].flip(1)


class PlainPath:
    """One path of the base model: ``denoise(x, sigma) -> (guided, unconditional)`` for a latent
    x (1, F, C, h, w) conditioned on one keyframe, in x's own frame order.

    ``scale``: the guidance scale (a float, or a per-frame tensor in x's frame order) or None
    (one conditional row; both outputs are the conditional estimate). ``max_rows`` caps the rows
    of one model call.
    """

    def __init__(self, model, cond: KeyframeCondition, added_time_ids: torch.Tensor, scale=None,
                 max_rows: int | None = None):
        self.model, self.backbone, self.scale = model, for_model(model), scale
        self.max_rows = max_rows
        self.rows = self.backbone.rows(cond, added_time_ids, scale is not None)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor):
        xs = x.expand(len(self.rows), -1, -1, -1, -1)
        p = predict_plain(self.model, xs, sigma, self.rows, self.max_rows)
        return guide(self.backbone.from_prediction(xs, sigma, p), self.scale)


class RotatedBackward:
    """GI's backward path on its own: ``denoise(x_rev, sigma) -> (guided, unconditional)`` for
    the time-flipped latent x_rev, conditioned on the end frame, in x_rev's frame order.

    Every controlled layer follows ``plans`` (the fine-tuned backward weights; the forward maps
    rotated by 180 degrees). Those maps are the forward direction's (start frame) on the same
    noisy latent, ``x_rev.flip(1)``, so each call also predicts the forward rows on it, in the
    pass ``dual_pass`` (:func:`predict_dual`), and keeps only the backward rows' prediction. Under
    guidance the unconditional backward row gets the unconditional forward row's map.
    """

    def __init__(self, model, start: KeyframeCondition, end: KeyframeCondition,
                 added_time_ids: torch.Tensor, scale, plans: dict[str, attention.LayerPlan],
                 dual_pass: str = "fused", max_rows: int | None = None):
        if dual_pass not in DUAL_PASSES:
            raise ValueError(f"dual_pass must be 'fused' or 'reference', not {dual_pass!r}")
        self.model, self.backbone, self.scale, self.plans = model, for_model(model), scale, plans
        self.dual_pass, self.max_rows = dual_pass, max_rows
        guided = scale is not None
        self.forward_rows = self.backbone.rows(start, added_time_ids, guided)
        self.backward_rows = self.backbone.rows(end, added_time_ids, guided)

    def __call__(self, x_rev: torch.Tensor, sigma: torch.Tensor):
        n = len(self.forward_rows)
        xf = x_rev.flip(1).expand(n, -1, -1, -1, -1)
        xb = x_rev.expand(n, -1, -1, -1, -1)
        _, pb = predict_dual(self.model, xf, xb, sigma, self.forward_rows, self.backward_rows,
                             self.plans, self.dual_pass, self.max_rows)
        return guide(self.backbone.from_prediction(xb, sigma, pb), self.scale)
