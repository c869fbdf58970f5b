"""Control of the temporal self-attention layers: where the paper's method lives.

Every attention layer that carries the motion (the backbone's, :mod:`inbetweening.backbones`: in
SVD the temporal self-attention layers, ``...temporal_transformer_blocks.0.attn1``, 16 in SVD-XT)
gets a :class:`TemporalAttentionProcessor`. A processor knows its layer's *plan* for the backward
direction (use the forward maps rotated by 180 degrees or not; use the backward weights or the
base ones) and runs in one of these *phases*:

``plain``   ordinary attention (the base model, e.g. the ``forward`` method);
``fused``   one model call for both directions: the batch is forward rows then backward rows, and
            the backward rows attend with ``sdpa(Q_fwd.flip(frames), K_fwd.flip(frames), V_bwd)``
            (the backbone says how time is reversed in a layer's queries and keys),
            which equals the forward softmax map rotated by 180 degrees applied to ``V_bwd``
            (``softmax(QK^T).flip(-2, -1) == softmax(Q' K'^T)`` with Q', K' flipped in time), so no
            map is ever materialised;
``record``  the paper literally, first call: explicit softmax maps, kept for the second call;
``inject``  the paper literally, second call (backward rows only): the kept maps, rotated.
``record_qk`` / ``inject_qk``  two calls without maps (fine-tuning): the forward call keeps its
            Q, K flipped in time (detached); the backward call attends with
            ``sdpa(Q_fwd.flip, K_fwd.flip, V_bwd)``, so it alone needs autograd.

The literal ``record``/``inject`` pair is the reference the fused path is tested against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import backbones
from .utils import InbetweeningError

PHASES = ("plain", "fused", "record", "inject", "record_qk", "inject_qk")
# Names of the projections a backward-weights file may hold, relative to the layer.
ROTATION_TENSORS = ("to_v.weight", "to_out.0.weight")
NO_ROTATION_TENSORS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


@dataclass(frozen=True)
class LayerPlan:
    """What the backward direction does in one layer."""

    rotate: bool  # attend with the forward maps rotated by 180 degrees
    backward_weights: bool  # project with the backward weights (else the base weights)


def unwrap(unet):
    """The UNet itself under a ``torch.compile`` wrapper (whose module names gain an
    ``_orig_mod.`` prefix); ``unet`` when it is not wrapped."""
    return getattr(unet, "_orig_mod", unet)


def controlled_layers(model) -> dict[str, torch.nn.Module]:
    """The attention modules of ``model`` whose backward direction is controlled (its backbone's,
    see :mod:`inbetweening.backbones`), by module name (as in the unwrapped model, see
    :func:`unwrap`), in model order."""
    inner = unwrap(model)
    return backbones.for_model(inner).attention_layers(inner)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    n, f, inner = t.shape
    return t.view(n, f, heads, inner // heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    n, h, f, d = t.shape
    return t.transpose(1, 2).reshape(n, f, h * d)


class TemporalAttentionProcessor:
    """Attention processor for one temporal self-attention layer (see the module docstring).

    ``weights`` holds the layer's backward tensors by their name relative to the layer
    (``"to_v.weight"``, ``"to_out.0.weight"``, and for the no-rotation variant also
    ``"to_q.weight"``, ``"to_k.weight"``); anything absent falls back to the base weights.
    ``variant`` names the backward-weights variant they are (:data:`inbetweening.backward.VARIANTS`;
    set with them by :func:`inbetweening.backward.set_backward_weights`): two variants may hold
    the same tensors and differ only in how they were trained.
    """

    def __init__(self, name: str, flip_frames=backbones.SVD.flip_frames):
        self.name = name
        self.flip_frames = flip_frames  # (t, dim) -> t with time reversed along token axis dim
        self.phase = "plain"
        self.plan = LayerPlan(rotate=False, backward_weights=False)
        self.weights: dict[str, torch.Tensor] = {}
        self.variant: str | None = None
        self.maps: torch.Tensor | None = None  # recorded softmax maps (reference path)
        self.qk: tuple[torch.Tensor, torch.Tensor] | None = None  # flipped forward Q, K

    # -- projections -------------------------------------------------------------------------
    def _base(self, attn) -> dict[str, torch.Tensor | None]:
        layers = {"to_q": attn.to_q, "to_k": attn.to_k, "to_v": attn.to_v,
                  "to_out.0": attn.to_out[0]}
        return {f"{name}.{part}": getattr(layer, part) for name, layer in layers.items()
                for part in ("weight", "bias")}

    def _backward(self, attn, like: torch.Tensor) -> dict[str, torch.Tensor | None]:
        w = self._base(attn)
        if self.plan.backward_weights:
            if not self.weights:
                raise InbetweeningError(
                    f"layer {self.name} has no backward weights loaded; load a backward-weights "
                    "file or use a method that needs none (gi-noft, trf, forward)")
            for k, t in self.weights.items():
                w[k] = t.to(device=like.device, dtype=like.dtype)
        return w

    @staticmethod
    def _proj(x, w: dict, name: str):
        """x through the projection ``name`` (to_q, to_k, to_v, to_out.0) of the weights ``w``."""
        b = w[f"{name}.bias"]
        return F.linear(x, w[f"{name}.weight"].to(x.dtype), None if b is None else b.to(x.dtype))

    # -- the four phases ---------------------------------------------------------------------
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        x = hidden_states  # (rows, frames, channels); rows = batch * height * width
        if self.phase == "plain":
            return self._attend(attn, x, self._base(attn))
        if self.phase == "fused":
            return self._fused(attn, x)
        if self.phase == "record":
            return self._record(attn, x)
        if self.phase == "inject":
            return self._inject(attn, x)
        if self.phase == "record_qk":
            return self._record_qk(attn, x)
        if self.phase == "inject_qk":
            return self._inject_qk(attn, x)
        raise ValueError(f"unknown phase {self.phase!r}")

    def _attend(self, attn, x, w):
        q, k, v = (self._proj(x, w, n) for n in ("to_q", "to_k", "to_v"))
        return self._sdpa(attn, q, k, v, w)

    def _sdpa(self, attn, q, k, v, w):
        h = attn.heads
        o = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h),
                                           scale=attn.scale)
        return self._proj(_merge(o), w, "to_out.0")

    def _fused(self, attn, x):
        rows = x.shape[0]
        if rows % 2:
            raise RuntimeError(f"fused call with an odd number of rows ({rows}) in {self.name}")
        m = rows // 2
        xf, xb = x[:m], x[m:]
        base, bwd = self._base(attn), self._backward(attn, x)
        qf, kf, vf = (self._proj(xf, base, n) for n in ("to_q", "to_k", "to_v"))
        if self.plan.rotate:
            # The rotated map of the forward rows, without materialising it. Detached: the
            # backward direction reads the forward model's attention, it does not train it.
            qb, kb = self.flip_frames(qf.detach()), self.flip_frames(kf.detach())
        else:
            qb, kb = self._proj(xb, bwd, "to_q"), self._proj(xb, bwd, "to_k")
        vb = self._proj(xb, bwd, "to_v")
        h = attn.heads
        o = F.scaled_dot_product_attention(
            _heads(torch.cat([qf, qb]), h), _heads(torch.cat([kf, kb]), h),
            _heads(torch.cat([vf, vb]), h), scale=attn.scale)
        o = _merge(o)
        return torch.cat([
            self._proj(o[:m], base, "to_out.0"),
            self._proj(o[m:], bwd, "to_out.0"),
        ])

    @staticmethod
    def _softmax_map(attn, q, k):
        h = attn.heads
        scores = _heads(q, h) @ _heads(k, h).transpose(-1, -2) * attn.scale
        return scores.softmax(dim=-1)  # (rows, heads, frames, frames)

    def _apply_map(self, attn, a, v, w):
        o = _merge(a @ _heads(v, attn.heads))
        return self._proj(o, w, "to_out.0")

    def _record(self, attn, x):
        w = self._base(attn)
        a = self._softmax_map(attn, self._proj(x, w, "to_q"), self._proj(x, w, "to_k"))
        self.maps = a.detach() if self.plan.rotate else None
        return self._apply_map(attn, a, self._proj(x, w, "to_v"), w)

    def _inject(self, attn, x):
        w = self._backward(attn, x)
        if self.plan.rotate:
            if self.maps is None or self.maps.shape[0] != x.shape[0]:
                raise RuntimeError(f"{self.name}: no recorded maps for these rows; run the "
                                   "forward call in the 'record' phase first")
            a = self.flip_frames(self.flip_frames(self.maps, -2), -1)  # rotate by 180 degrees
        else:
            a = self._softmax_map(attn, self._proj(x, w, "to_q"),
                                  self._proj(x, w, "to_k"))
        return self._apply_map(attn, a, self._proj(x, w, "to_v"), w)

    def _record_qk(self, attn, x):
        w = self._base(attn)
        q, k = self._proj(x, w, "to_q"), self._proj(x, w, "to_k")
        self.qk = ((self.flip_frames(q.detach()), self.flip_frames(k.detach()))
                   if self.plan.rotate else None)
        return self._sdpa(attn, q, k, self._proj(x, w, "to_v"), w)

    def _inject_qk(self, attn, x):
        w = self._backward(attn, x)
        if self.plan.rotate:
            if self.qk is None or self.qk[0].shape[0] != x.shape[0]:
                raise RuntimeError(f"{self.name}: no recorded Q, K for these rows; run the "
                                   "forward call in the 'record_qk' phase first")
            q, k = self.qk
        else:
            q, k = self._proj(x, w, "to_q"), self._proj(x, w, "to_k")
        return self._sdpa(attn, q, k, self._proj(x, w, "to_v"), w)


def install(model) -> dict[str, TemporalAttentionProcessor]:
    """Give every controlled attention layer (:func:`controlled_layers`) a
    :class:`TemporalAttentionProcessor` (once) and return them by layer name. Other processors
    are left as they are. A compiled model (``torch.compile``) is controlled through the module it
    wraps."""
    model = unwrap(model)
    backbone = backbones.for_model(model)
    layers = backbone.attention_layers(model)
    if not layers:
        raise InbetweeningError(f"this model has no {backbone.layers} (is it an "
                                f"{backbone.model}?)")
    current = dict(model.attn_processors)
    procs = {}
    for name, attn in layers.items():
        proc = current[f"{name}.processor"]
        if not isinstance(proc, TemporalAttentionProcessor):
            backbone.check_layer(name, attn)
            proc = TemporalAttentionProcessor(name, backbone.flip_frames)
            current[f"{name}.processor"] = proc
        procs[name] = proc
    model.set_attn_processor(dict(current))  # set_attn_processor pops from the dict it gets
    return procs


def installed(unet) -> dict[str, TemporalAttentionProcessor]:
    """The processors :func:`install` put on ``unet`` (empty if none)."""
    out = {}
    for key, proc in unwrap(unet).attn_processors.items():
        if isinstance(proc, TemporalAttentionProcessor):
            out[key.removesuffix(".processor")] = proc
    return out


@contextlib.contextmanager
def phase(unet, name: str, plans: dict[str, LayerPlan] | None = None):
    """Run the block with every temporal processor in phase ``name`` (and, if given, these
    per-layer plans); restore the plain phase afterwards. Recorded maps are dropped on exit
    from an ``inject`` phase."""
    if name not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    procs = installed(unet) or install(unet)
    for layer, proc in procs.items():
        proc.phase = name
        if plans is not None:
            proc.plan = plans[layer]
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.phase = "plain"
            if name == "inject":
                proc.maps = None
            if name == "inject_qk":
                proc.qk = None
