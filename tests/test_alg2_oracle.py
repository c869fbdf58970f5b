"""An independent oracle for Alg. 2 of the paper (dual-directional sampling) on a tiny random SVD.

The oracle writes the sampling loop out literally with plain diffusers UNets and its own
attention processors (tests/oracles.py), and shares none of the package's dual-direction plumbing (no
InbetweenDenoiser, no sample_euler, no TemporalAttentionProcessor, no layer plans, no
edm_scalings). Per prediction at sigma:

1. forward: the UNet on x, conditioned on the START frame; every temporal self-attention layer
   records its softmax map A (rows, heads, F, F);
2. backward: a copy of the UNet whose temporal attn1 to_v / to_out.0 hold the backward weights,
   on x flipped in time, conditioned on the END frame; every temporal self-attention layer uses
   the recorded A rotated by 180 degrees (flipped on both frame axes) instead of its own map;
3. both are EDM v-predictions: D = x / (s^2 + 1) - s / sqrt(s^2 + 1) * v, on the UNet input
   x / sqrt(s^2 + 1) and the timestep the scheduler gives for s;
4. the backward D is flipped back in time, and the two are averaged (w = 0.5);
5. Euler: x <- x + (s_next - s) * (x - D) / s; with re-injection, the first int(n / 2) steps
   are redone from x_next + sqrt(s^2 - s_next^2) * fresh noise.

Only the per-keyframe conditioning (CLIP embedding, noise-augmented VAE latent, added time ids)
and the keyframe preprocessing come from the package. The noise comes from one generator in the
pipeline's order: the keyframes' augmentation noise (one draw, added to both, as published), the
initial latent, then the re-injection noise.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from oracles import rotating_copies, temporal_layers

from inbetweening import attention, backward, conditioning

FRAMES, SIZE, FPS, MOTION, AUG = 6, 64, 7, 127, 0.02
SEED = 4


def _literal_unets(unet):
    """(forward UNet that records, backward UNet that injects, their store) as copies of
    ``unet``; the backward copy gets the backward to_v / to_out.0 weights loaded on ``unet``."""
    weights = {n: t.detach().clone() for n, t in backward.backward_parameters(unet).items()}
    assert weights and all(n.endswith(("attn1.to_v.weight", "attn1.to_out.0.weight"))
                           for n in weights)
    own = dict(unet.named_parameters())
    assert max((weights[n] - own[n]).abs().max().item() for n in weights) > 1e-2  # they differ
    fwd, bwd, store = rotating_copies(unet, weights)
    assert len(temporal_layers(fwd)) == 6
    return fwd, bwd, store


def _condition(pipe, keyframe, noise):
    """(CLIP embedding, noise-augmented conditioning latent) of one keyframe, augmented with
    ``noise``."""
    image = pipe.preprocess(keyframe, SIZE, SIZE, "crop")  # (1, 3, H, W) in [-1, 1]
    embedding = conditioning.clip_embedding(pipe.image_encoder, pipe.feature_extractor, image)
    latent = conditioning.image_latent(pipe.vae, image, AUG, noise)
    return embedding, latent


@torch.no_grad()
def alg2_oracle(pipe, start, end, steps: int, reinject_count: int, seed: int = SEED,
                broken: str | None = None):
    """The final latent (1, F, C, h, w). ``broken`` (for the sensitivity check only) drops one
    piece of Alg. 2: "flip-back", "flip-in" or "end-condition"."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 3, SIZE, SIZE), generator=g)  # one draw for both keyframes (published)
    emb_s, lat_s = _condition(pipe, start, noise)
    emb_e, lat_e = _condition(pipe, end, noise)
    ids = conditioning.added_time_ids(FPS, MOTION, AUG, 1)
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    sigmas, timesteps = scheduler.sigmas.float(), scheduler.timesteps
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    h = SIZE // pipe.vae_scale_factor
    x = torch.randn((1, FRAMES, 4, h, h), generator=g) * scheduler.init_noise_sigma
    fwd, bwd, store = _literal_unets(pipe.unet)

    def v_pred(model, x, i, embedding, latent):
        s = sigmas[i]
        inp = torch.cat([x / (s**2 + 1) ** 0.5, latent[:, None].repeat(1, FRAMES, 1, 1, 1)], 2)
        v = model(inp, timesteps[i], encoder_hidden_states=embedding, added_time_ids=ids).sample
        return x / (s**2 + 1) - s / (s**2 + 1) ** 0.5 * v

    def denoise(x, i):
        store.clear()
        d_fwd = v_pred(fwd, x, i, emb_s, lat_s)  # records every layer's map
        assert len(store) == 6
        x_bwd = x if broken == "flip-in" else x.flip(1)
        emb, lat = (emb_s, lat_s) if broken == "end-condition" else (emb_e, lat_e)
        d_bwd = v_pred(bwd, x_bwd, i, emb, lat)  # injects them, rotated
        return 0.5 * d_fwd + 0.5 * (d_bwd if broken == "flip-back" else d_bwd.flip(1))

    renoised = int(steps * 0.5)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_next = x
        for r in range((reinject_count if i < renoised else 0) + 1):
            if r > 0:  # back to sigma s from the last attempt's x_next (Alg. 2, line 10)
                noise = torch.randn(x.shape, generator=g)
                x = x_next + (s**2 - s_next**2) ** 0.5 * noise
            x_next = x + (s_next - s) * (x - denoise(x, i)) / s
        x = x_next
    return x


def _pipeline(pipe, keyframes, steps, reinject_count, dual_pass):
    return pipe(*keyframes, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=steps,
                min_guidance_scale=1.0, max_guidance_scale=1.0, fps=FPS, motion_bucket_id=MOTION,
                noise_aug_strength=AUG, reinject_count=reinject_count, reinject_fraction=0.5,
                method="gi", dual_pass=dual_pass, output_type="latent",
                generator=torch.Generator().manual_seed(SEED)).frames


# Three steps, not fewer: a step from sigma_max = 700 lands near the data as x - (x - D), where
# x ~ 700 * N(0, 1) in float32 carries ~1e-4 of rounding; the 700 -> 15.6 -> 0.002 -> 0
# schedule of 3 steps damps it (the two computations agree to ~1e-5 there).
STEPS = 3


@pytest.mark.parametrize("reinject_count", [0, 1], ids=["plain", "reinject"])
@pytest.mark.parametrize("dual_pass", ["fused", "reference"])
def test_pipeline_follows_alg2_literally(tiny_pipe, keyframes, reinject_count, dual_pass):
    assert backward.loaded_variant(tiny_pipe.unet) == "rotation"
    want = alg2_oracle(tiny_pipe, *keyframes, STEPS, reinject_count)
    got = _pipeline(tiny_pipe, keyframes, STEPS, reinject_count, dual_pass)
    assert got.shape == want.shape == (1, FRAMES, 4, 8, 8)
    err = (got - want).abs().max().item()
    assert err <= 1e-4, err
    # The oracle used its own processors on copies: the pipeline's UNet still has the package's.
    assert len(attention.installed(tiny_pipe.unet)) == 6


def test_the_oracle_is_sensitive(tiny_pipe, keyframes):
    """Not vacuous: dropping either flip or the end frame's conditioning, or one re-injection
    more, moves the latent far beyond the 1e-4 the pipeline is held to (2 steps suffice here)."""
    base = alg2_oracle(tiny_pipe, *keyframes, 2, 0)
    for broken in ("flip-back", "flip-in", "end-condition"):
        diff = (alg2_oracle(tiny_pipe, *keyframes, 2, 0, broken=broken) - base).abs().max()
        assert diff > 1e-2, (broken, diff)
    assert (alg2_oracle(tiny_pipe, *keyframes, 2, 1) - base).abs().max() > 1e-2
