"""The backbone seam (inbetweening.backbones): GI through a video model that is not SVD.

:class:`TinyJointVideoModel` is a small video transformer of the kind the next image-to-video
models are (a DiT): each frame cut into patches, the tokens of ALL frames in one sequence,
joint spatio-temporal self-attention (diffusers' ``Attention``), a learned per-frame embedding,
and flow matching (x_t = (1 - t) x0 + t noise, the model predicting the velocity noise - x0). In
such a model the rotation of the paper is reversing the frame blocks of the queries and keys.
Its backbone (:class:`JointAttentionBackbone`) is the only thing the package is told.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from inbetweening import attention, backward
from inbetweening.backbones import Backbone, Rows, for_model
from inbetweening.conditioning import KeyframeCondition
from inbetweening.denoisers import InbetweenDenoiser, fuse_weights, guidance_per_frame
from inbetweening.methods import layer_plans
from inbetweening.sampling import sample_euler

FRAMES, CHANNELS, SIDE, PATCH, DIM, COND = 5, 4, 8, 2, 32, 16
TOKENS = (SIDE // PATCH) ** 2  # per frame


class JointAttentionBackbone(Backbone):
    """A DiT-like family: every block's self-attention over the tokens of all frames; a frame is
    a block of ``tokens_per_frame`` consecutive tokens; flow matching in EDM's noise levels."""

    name = "joint-attention"

    def __init__(self, tokens_per_frame: int, depth: int):
        self.tokens_per_frame, self.depth = tokens_per_frame, depth

    def attention_layers(self, model):
        return {n: m for n, m in model.named_modules() if isinstance(m, Attention)}

    def in_decoder(self, name: str) -> bool:  # blocks.{i}.attn: the second half of the blocks
        return int(name.split(".")[1]) >= self.depth // 2

    def flip_frames(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        dim = dim % t.ndim
        return t.unflatten(dim, (-1, self.tokens_per_frame)).flip(dim).flatten(dim, dim + 1)

    def scalings(self, sigma):
        t = sigma / (1 + sigma)
        return 1 / (1 + sigma), 1 / (1 + sigma), -sigma / (1 + sigma), t

    def call(self, model, x, sigma, rows: Rows):
        c_in, _, _, t = self.scalings(sigma.view(-1, 1, 1, 1, 1) if sigma.ndim else sigma)
        return model(c_in * x, t.reshape(-1), rows.embeds, rows.latents).float()

    def rows(self, cond: KeyframeCondition, ids, guided: bool) -> Rows:
        e, lat = cond.embedding, cond.latent
        if guided:
            e, lat = torch.cat([torch.zeros_like(e), e]), torch.cat([torch.zeros_like(lat), lat])
        return Rows(e, lat, ids)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)
        self.attn = Attention(DIM, heads=2, dim_head=DIM // 2, bias=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(),
                                       torch.nn.Linear(2 * DIM, DIM))

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class Processors:
    """What diffusers' models offer for attention processors (``attn_processors``,
    ``set_attn_processor``), written here so the test runs on every diffusers the package takes
    (its own mixin for this came after 0.32)."""

    @property
    def attn_processors(self) -> dict:
        return {f"{n}.processor": m.processor for n, m in self.named_modules()
                if isinstance(m, Attention)}

    def set_attn_processor(self, processors) -> None:
        for n, m in self.named_modules():
            if isinstance(m, Attention):
                m.set_processor(processors.pop(f"{n}.processor")
                                if isinstance(processors, dict) else processors)


class TinyJointVideoModel(Processors, torch.nn.Module):
    """x (N, F, C, h, w), time t (N,), keyframe embedding (N, 1, COND), image latent (N, C, h, w)
    -> velocity (N, F, C, h, w). The image latent is patched onto every frame's tokens."""

    def __init__(self, depth: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.patch_in = torch.nn.Linear(2 * CHANNELS * PATCH * PATCH, DIM)
        self.frame_embed = torch.nn.Parameter(0.5 * torch.randn(FRAMES, 1, DIM))
        self.time_embed = torch.nn.Linear(1, DIM)
        self.cond_embed = torch.nn.Linear(COND, DIM)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(depth))
        self.patch_out = torch.nn.Linear(DIM, CHANNELS * PATCH * PATCH)
        self.inbetween_backbone = JointAttentionBackbone(TOKENS, depth)

    @property
    def dtype(self):
        return self.patch_in.weight.dtype

    @staticmethod
    def patches(x):  # (N, F, C, h, w) -> (N, F, T, C p p)
        n, f, c, h, w = x.shape
        x = x.reshape(n, f, c, h // PATCH, PATCH, w // PATCH, PATCH)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, f, TOKENS, c * PATCH * PATCH)

    def forward(self, x, t, embeds, latents):
        n, f = x.shape[:2]
        image = latents.unsqueeze(1).expand(-1, f, -1, -1, -1)
        h = self.patch_in(torch.cat([self.patches(x), self.patches(image)], -1))
        h = h + self.frame_embed[:f] + self.time_embed(t.reshape(-1, 1, 1, 1).expand(n, 1, 1, 1))
        h = (h + self.cond_embed(embeds).unsqueeze(1)).reshape(n, f * TOKENS, DIM)
        for block in self.blocks:
            h = block(h)
        out = self.patch_out(h).reshape(n, f, SIDE // PATCH, SIDE // PATCH, CHANNELS, PATCH, PATCH)
        return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(n, f, CHANNELS, SIDE, SIDE)


# -- GI through it -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    m = TinyJointVideoModel().eval().requires_grad_(False)
    weights = backward.init_backward_weights(m, "rotation", requires_grad=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in weights.values():
            w.add_(0.2 * torch.randn(w.shape, generator=g))
    assert backward.loaded_variant(m) == "rotation"
    return m


@pytest.fixture(scope="module")
def conds():
    g = torch.Generator().manual_seed(2)
    make = lambda: KeyframeCondition(torch.randn(1, 1, COND, generator=g),  # noqa: E731
                                     torch.randn(1, CHANNELS, SIDE, SIDE, generator=g))
    return make(), make(), torch.zeros(1, 3)


def denoiser(model, conds, method="gi", dual_pass="fused", max_rows=None, guidance=3.0):
    start, end, ids = conds
    return InbetweenDenoiser(
        model, start, end if method != "forward" else None, ids,
        guidance_per_frame(FRAMES, 1.0, guidance, True), fuse_weights(FRAMES, "average"),
        layer_plans(method, model, backward.loaded_variant(model)), dual_pass, max_rows)


def test_the_model_names_its_backbone_and_the_package_controls_its_attention(model):
    assert isinstance(for_model(model), JointAttentionBackbone)
    assert sorted(attention.controlled_layers(model)) == ["blocks.0.attn", "blocks.1.attn"]
    assert sorted(backward.backward_parameter_names(model)) == [
        f"blocks.{i}.attn.{t}" for i in (0, 1) for t in ("to_out.0.weight", "to_v.weight")]
    plans = layer_plans("gi-noft", model, None)  # "w/o FT": rotated in the decoder half only
    assert [plans[n].rotate for n in sorted(plans)] == [False, True]


@pytest.mark.parametrize("max_rows", [None, 2])
def test_gi_sampling_fused_equals_the_reference_through_a_joint_attention_model(model, conds,
                                                                                max_rows):
    """The whole of Alg. 2 (Euler with noise re-injection, guidance, averaged directions) through
    the DiT: one fused call per prediction against the paper's two calls with explicit maps."""
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.2, 0.0])
    g = torch.Generator().manual_seed(3)
    x = 20.0 * torch.randn(1, FRAMES, CHANNELS, SIDE, SIDE, generator=g)

    def run(dual_pass):
        return sample_euler(denoiser(model, conds, dual_pass=dual_pass, max_rows=max_rows), x,
                            sigmas, generator=torch.Generator().manual_seed(4), reinject_count=2,
                            reinject_fraction=0.5)

    fused, reference = run("fused"), run("reference")
    assert (fused - reference).abs().max().item() <= 1e-4
    # not vacuous: without the rotated maps (the base model backwards) the video is another
    plans = layer_plans("trf-avg", model, None)
    start, end, ids = conds
    other = sample_euler(InbetweenDenoiser(model, start, end, ids,
                                           guidance_per_frame(FRAMES, 1.0, 3.0, True),
                                           fuse_weights(FRAMES, "average"), plans), x, sigmas,
                         generator=torch.Generator().manual_seed(4), reinject_count=2,
                         reinject_fraction=0.5)
    assert (fused - other).abs().max().item() > 1e-2


def test_the_rotation_reverses_whole_frames_of_the_joint_attention(model, conds):
    """The backward direction's map in every layer is the forward direction's with its frame
    blocks reversed on both axes (P A P^T), the spatial order inside a frame kept: checked
    against explicit maps permuted by hand, one layer's output at a time (its projections have
    biases, which SVD's temporal layers do not)."""
    name, attn = next(iter(attention.controlled_layers(model).items()))
    proc = attention.installed(model)[name]
    g = torch.Generator().manual_seed(5)
    xf, xb = torch.randn(2, 1, FRAMES * TOKENS, DIM, generator=g)
    with attention.phase(model, "fused", layer_plans("gi", model, "rotation")):
        got = proc(attn, torch.cat([xf, xb]))[1:]
    h = attn.heads

    def heads(t):
        return t.reshape(1, -1, h, DIM // h).transpose(1, 2)

    a = torch.softmax(heads(attn.to_q(xf)) @ heads(attn.to_k(xf)).transpose(-1, -2) * attn.scale,
                      dim=-1)
    order = torch.arange(FRAMES * TOKENS).reshape(FRAMES, TOKENS).flip(0).reshape(-1)
    turned = a[:, :, order][:, :, :, order]
    w = proc.weights
    v = heads(torch.nn.functional.linear(xb, w["to_v.weight"], attn.to_v.bias))
    o = (turned @ v).transpose(1, 2).reshape(1, -1, DIM)
    want = torch.nn.functional.linear(o, w["to_out.0.weight"], attn.to_out[0].bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_one_direction_runs_the_model_as_it_is(model, conds):
    x = torch.randn(1, FRAMES, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor(2.0)
    got = denoiser(model, conds, method="forward", guidance=1.0)(x, sigma)
    start, _, ids = conds
    with torch.no_grad():
        v = model(x / 3.0, (sigma / 3.0).reshape(1), start.embedding, start.latent)
    torch.testing.assert_close(got, x / 3.0 - (2.0 / 3.0) * v, rtol=1e-5, atol=1e-6)
