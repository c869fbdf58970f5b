"""Backbones: what a family of video models does its own way, in one object each.

The method needs four things from a model, and they are all here, behind :class:`Backbone`:

- which attention layers carry the motion (whose backward direction is controlled: the rotated
  maps, the backward weights), and how to reverse time in their queries and keys;
- the model call: a video latent's rows, a noise level and the keyframe conditioning in, the
  model's raw prediction out (written once: sampling, the peers, fine-tuning and the toy models'
  training all go through :meth:`Backbone.call`);
- the parameterisation: from the raw prediction to the clean estimate of the video
  (:meth:`Backbone.scalings`, EDM's c_in, c_skip, c_out, c_noise for a noise level sigma);
- the unconditional rows of classifier-free guidance.

The samplers work in EDM's noise levels (x = clean + sigma * noise) whatever the backbone: a
flow-matching model fits by its scalings (c_in = c_skip = 1 / (1 + sigma), c_out = -sigma /
(1 + sigma), time sigma / (1 + sigma)). :data:`SVD` (Stable Video Diffusion: spatio-temporal
UNet, EDM v-prediction, channel-concatenated image latent, added time ids) is the only family of
the product; ``docs/backbones.md`` says how another (a DiT video model) plugs in, and the tests run
``gi`` through a small joint-attention model that is not SVD.

A model names its backbone with an ``inbetween_backbone`` attribute; a model without one is SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conditioning import KeyframeCondition, edm_scalings


@dataclass(frozen=True)
class Rows:
    """The conditioning of the rows of one model call: per-row keyframe embeddings (N, 1, D) and
    image latents (N, C, h, w), and the micro-conditioning ids all rows share (1, k)."""

    embeds: torch.Tensor
    latents: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, rows: slice) -> Rows:
        return Rows(self.embeds[rows], self.latents[rows], self.ids)

    def __add__(self, other: Rows) -> Rows:
        """These rows, then ``other``'s (the ids are this call's)."""
        return Rows(torch.cat([self.embeds, other.embeds]),
                    torch.cat([self.latents, other.latents]), self.ids)


class Backbone:
    """A family of video models (see the module's docstring). Subclasses fill in the four parts;
    this base class holds what follows from them."""

    name = "backbone"
    layers = "attention layers"  # what its controlled layers are, in words (for messages)
    model = "model"  # what a model of the family is, in words (for messages)

    # -- the attention layers ----------------------------------------------------------------
    def attention_layers(self, model) -> dict[str, torch.nn.Module]:
        """The attention modules whose backward direction is controlled, by module name, in model
        order. They must be diffusers ``Attention`` modules (to_q, to_k, to_v, to_out, heads,
        scale)."""
        raise NotImplementedError

    def check_layer(self, name: str, attn) -> None:
        """Refuse a layer the attention processor cannot run as the model would."""

    def in_decoder(self, name: str) -> bool:
        """Whether a controlled layer is in the decoder half of the model (the paper's "w/o FT"
        rotates the maps there only)."""
        raise NotImplementedError

    def flip_frames(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``t`` with time reversed along its token axis ``dim``: a controlled layer's queries or
        keys (rows, tokens, dim), or both axes of its attention maps (which turns a map by 180
        degrees in time)."""
        raise NotImplementedError

    # -- the call and the parameterisation ---------------------------------------------------
    def scalings(self, sigma: torch.Tensor):
        """(c_in, c_skip, c_out, c_noise) at noise level ``sigma``: clean estimate = c_skip * x
        + c_out * call(c_in * x, c_noise)."""
        raise NotImplementedError

    def call(self, model, x: torch.Tensor, sigma: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The model's raw prediction (float32) for latents x (N, F, C, h, w) at noise level
        ``sigma`` (one for all rows, or (N,)), conditioned on ``rows``."""
        raise NotImplementedError

    def rows(self, cond: KeyframeCondition, ids: torch.Tensor, guided: bool) -> Rows:
        """One keyframe's rows: [unconditional, conditional] when ``guided``, else
        [conditional]."""
        raise NotImplementedError

    def denoise(self, model, x: torch.Tensor, sigma: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The clean estimate of x (N, F, C, h, w)."""
        _, c_skip, c_out, _ = self.scalings(_per_row(sigma, x))
        return c_skip * x + c_out * self.call(model, x, sigma, rows)

    def from_prediction(self, x: torch.Tensor, sigma: torch.Tensor,
                        prediction: torch.Tensor) -> torch.Tensor:
        """The clean estimate from a raw prediction of x (as :meth:`denoise` makes it)."""
        _, c_skip, c_out, _ = self.scalings(_per_row(sigma, x))
        return c_skip * x + c_out * prediction


def _per_row(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` shaped to broadcast against x's rows: as it is when it is one number, (N, 1, 1,
    1, 1) when it has a value per row."""
    return sigma.view(-1, 1, 1, 1, 1) if sigma.ndim else sigma


class SVDBackbone(Backbone):
    """Stable Video Diffusion (diffusers' ``UNetSpatioTemporalConditionModel``): the temporal
    self-attention layers carry the motion (16 in SVD-XT; their input is (batch x height x width,
    frames, channels), so time is axis 1); EDM v-prediction; the image latent concatenated on the
    channels of every frame; the added time ids [fps - 1, motion bucket, noise augmentation]; the
    unconditional rows are zeros for both the embedding and the image latent."""

    name = "svd"
    layers = "temporal self-attention layers"
    model = "SVD UNet"
    LAYER_SUFFIX = "temporal_transformer_blocks.0.attn1"

    def attention_layers(self, model) -> dict[str, torch.nn.Module]:
        return {name: m for name, m in model.named_modules() if name.endswith(self.LAYER_SUFFIX)}

    def check_layer(self, name: str, attn) -> None:
        from .utils import InbetweeningError

        ok = (getattr(attn, "spatial_norm", None) is None
              and getattr(attn, "group_norm", None) is None
              and not getattr(attn, "residual_connection", False)
              and getattr(attn, "rescale_output_factor", 1.0) == 1.0
              and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
              and not getattr(attn, "is_cross_attention", False))
        if not ok:
            raise InbetweeningError(f"{name} is not an SVD-style temporal self-attention layer")

    def in_decoder(self, name: str) -> bool:
        return name.startswith("up_blocks.")

    def flip_frames(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return t.flip(dim)  # (a temporal layer's tokens are the frames)

    def scalings(self, sigma: torch.Tensor):
        return edm_scalings(sigma)

    def call(self, model, x: torch.Tensor, sigma: torch.Tensor, rows: Rows) -> torch.Tensor:
        c_in, _, _, c_noise = self.scalings(_per_row(sigma, x))
        dtype = model.dtype
        f = x.shape[1]
        inp = torch.cat([c_in * x, rows.latents.unsqueeze(1).expand(-1, f, -1, -1, -1)], dim=2)
        t = c_noise.reshape(-1).to(x.device, dtype)
        ids = rows.ids.expand(x.shape[0], -1).to(x.device, dtype)
        return model(inp.to(dtype), t, rows.embeds.to(dtype), ids, return_dict=False)[0].float()

    def rows(self, cond: KeyframeCondition, ids: torch.Tensor, guided: bool) -> Rows:
        e, lat = cond.embedding, cond.latent
        if guided:
            e, lat = torch.cat([torch.zeros_like(e), e]), torch.cat([torch.zeros_like(lat), lat])
        return Rows(e, lat, ids)


SVD = SVDBackbone()


def for_model(model) -> Backbone:
    """The backbone of ``model`` (under a ``torch.compile`` wrapper too): the one it names in
    ``inbetween_backbone``, else SVD."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "inbetween_backbone", None) or SVD
