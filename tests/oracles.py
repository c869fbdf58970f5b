"""The oracles' own network pieces: the paper's operations written out literally with plain
diffusers UNets (copies of the model under test), sharing none of the package's machinery (no
backbone, no attention processor of ours, no layer plans, no edm_scalings).

- :class:`ExplicitMapAttention`: a temporal self-attention layer with an explicit softmax map
  that records it, or injects the recorded one rotated by 180 degrees (both frame axes flipped);
- :func:`rotating_copies`: a forward copy of the UNet that records and a backward copy, holding
  the backward weights, that injects (the paper's Alg. 1 and 2 take their maps this way);
- :func:`clean_estimate`: SVD's EDM v-prediction, written out.
"""

from __future__ import annotations

import copy

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from inbetweening import backward

TEMPORAL = "temporal_transformer_blocks.0.attn1"


class ExplicitMapAttention:
    """One temporal self-attention layer computed with an explicit softmax map. ``record``: this
    module's own weights, the map kept in ``store[name]``; ``inject``: the map kept under this
    layer's name, turned by 180 degrees, applied to this module's own values and output
    projection (the backward weights on a backward copy)."""

    def __init__(self, name: str, mode: str, store: dict[str, torch.Tensor], keep: bool = True):
        self.name, self.mode, self.store, self.keep = name, mode, store, keep

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        assert encoder_hidden_states is None and attention_mask is None
        n, f, _ = hidden_states.shape

        def heads(t):
            return t.reshape(n, f, attn.heads, -1).transpose(1, 2)  # (rows, heads, F, d)

        v = heads(attn.to_v(hidden_states))
        if self.mode == "record":
            q, k = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states))
            a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
            self.store[self.name] = a.detach()
        else:
            a = self.store[self.name] if self.keep else self.store.pop(self.name)
            assert a.shape[0] == n
            a = torch.flip(a, dims=(2, 3))
        out = (a @ v).transpose(1, 2).reshape(n, f, -1)
        return attn.to_out[1](attn.to_out[0](out))


def temporal_layers(model) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n.endswith(TEMPORAL)]


def plain_copy(unet):
    """A copy of the base UNet with diffusers' own attention everywhere."""
    model = copy.deepcopy(unet)
    model.set_attn_processor(AttnProcessor2_0())
    return model


def rotating_copies(unet, weights: dict | None = None, only=lambda name: True, keep=True):
    """(forward copy that records maps, backward copy holding the backward ``weights`` (default:
    those loaded on ``unet``) that injects them rotated, the store between them). Only the
    temporal layers for which ``only(name)`` is true record and inject; the others attend as
    diffusers does."""
    if weights is None:
        weights = {k: t.detach().clone() for k, t in backward.backward_parameters(unet).items()}
    fwd, bwd = plain_copy(unet), plain_copy(unet)
    with torch.no_grad():
        missing, unexpected = bwd.load_state_dict(weights, strict=False)
    assert not unexpected and len(missing) == len(bwd.state_dict()) - len(weights)
    store: dict[str, torch.Tensor] = {}
    for model, mode in ((fwd, "record"), (bwd, "inject")):
        layers = temporal_layers(model)
        assert layers
        for name, module in layers:
            if only(name):
                module.set_processor(ExplicitMapAttention(name, mode, store, keep))
    return fwd, bwd, store


def clean_estimate(model, x, sigma, embedding, latent, ids):
    """SVD's EDM v-prediction, written out: D = x / (s^2 + 1) - s / sqrt(s^2 + 1) * v, v the
    UNet on x / sqrt(s^2 + 1) with the image latent repeated over frames on the channels, at the
    timestep 0.25 ln(s). x: (N, F, C, h, w); sigma: a number or (N,); embedding (N, 1, D),
    latent (N, C, h, w), ids (1 or N, 3)."""
    s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
    frames = x.shape[1]
    inp = torch.cat([x / (s**2 + 1) ** 0.5, latent[:, None].repeat(1, frames, 1, 1, 1)], dim=2)
    v = model(inp, (0.25 * torch.log(s)).reshape(-1), encoder_hidden_states=embedding,
              added_time_ids=ids.expand(x.shape[0], -1)).sample
    return x / (s**2 + 1) - s / (s**2 + 1) ** 0.5 * v
