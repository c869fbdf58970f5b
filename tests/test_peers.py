"""The peers (inbetweening.peers) against literal, step-by-step versions of their algorithms.

Each oracle here is written out from the method's description (TRF's release, ViBiD's
Algorithm / release, GI's rotated maps) with plain diffusers UNets on copies of the tiny model:
its own EDM formulas, flips, guidance, fusion, conjugate gradients and, for the rotated maps, its
own attention processors with explicit softmax maps (tests/oracles.py). It shares none of the package's sampling
plumbing (no InbetweenDenoiser, no peers sampler or path denoiser, no TemporalAttentionProcessor,
no edm_scalings). Only the per-keyframe conditioning (CLIP embedding, noise-augmented latent),
the initial latent and the seed of the re-noising draws are shared inputs.

Each oracle also takes ``broken=...`` (one piece of the algorithm dropped or changed); the
sensitivity tests show every such change moves the result far beyond the 1e-4 the fast path is
held to, so the agreement is not vacuous.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from oracles import clean_estimate, plain_copy, rotating_copies, temporal_layers

from inbetweening import backward, conditioning, methods, peers, runners
from inbetweening.conditioning import KeyframeCondition
from inbetweening.denoisers import (
    InbetweenDenoiser, PlainPath, RotatedBackward, fuse_weights, guidance_per_frame,
)
from inbetweening.methods import layer_plans

FRAMES, SIZE, FPS, MOTION, AUG = 6, 64, 7, 127, 0.02
TOL = 1e-4


# -- shared inputs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from conftest import perturb_backward, tiny_components

    from inbetweening.pipeline import InbetweenPipeline

    p = InbetweenPipeline(**tiny_components(FRAMES))
    p.set_progress_bar_config(disable=True)
    perturb_backward(p)
    assert backward.loaded_variant(p.unet) == "rotation"
    return p


@pytest.fixture(scope="module")
def inputs(pipe):
    """(start, end) KeyframeConditions, added time ids, the clean keyframe images and the initial
    latent at sigma_max, all drawn from one generator."""
    g = torch.Generator().manual_seed(5)
    frames = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    images, conds = [], []
    with torch.no_grad():
        for f in frames:
            image = pipe.preprocess(f, SIZE, SIZE, "crop")
            emb = conditioning.clip_embedding(pipe.image_encoder, pipe.feature_extractor, image)
            noise = torch.randn(image.shape, generator=g)
            conds.append(KeyframeCondition(emb, conditioning.image_latent(pipe.vae, image, AUG,
                                                                          noise)))
            images.append(image)
    ids = conditioning.added_time_ids(FPS, MOTION, AUG, 1)
    x = torch.randn((1, FRAMES, 4, 8, 8), generator=g)
    return dict(start=conds[0], end=conds[1], ids=ids, images=images, x=x)


def _sigmas(pipe, steps):
    s = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    s.set_timesteps(steps)
    return s.sigmas.float()


def _x0(sigmas, inputs):
    return inputs["x"] * (sigmas[0] ** 2 + 1) ** 0.5


def _plans(pipe, method):
    return layer_plans(method, pipe.unet, backward.loaded_variant(pipe.unet))


# -- the oracles' own network pieces (tests/oracles.py) -----------------------------------------
def _rotating_copies(unet):
    fwd, bwd, store = rotating_copies(unet, keep=False)
    assert len(temporal_layers(fwd)) == 6
    return fwd, bwd, store


def _clean_estimates(model, x, s, cond, ids):
    """(D_uncond, D_cond) for x (1, F, C, h, w) at sigma s (oracles.clean_estimate), the
    unconditional row with zero embedding and zero image latent."""
    emb = torch.cat([torch.zeros_like(cond.embedding), cond.embedding])
    lat = torch.cat([torch.zeros_like(cond.latent), cond.latent])
    d = clean_estimate(model, torch.cat([x, x]), s, emb, lat, ids)
    return d[:1], d[1:]


_RESULTS: dict = {}


def _once(oracle, pipe, inputs, steps, **kw):
    """oracle(pipe, inputs, steps, **kw), computed once per module (the literal tests and the
    sensitivity tests share their unbroken runs)."""
    key = (oracle.__name__, steps, tuple(sorted(kw.items())))
    if key not in _RESULTS:
        _RESULTS[key] = oracle(pipe, inputs, steps, **kw)
    return _RESULTS[key]


# -- TRF ------------------------------------------------------------------------------------------
def release_visits(n, jump_length, jump_n_sample, ratio):
    """The order in which TRF's release visits step indices, built as its pipeline builds it:
    count t down from n - 1 to 0; at each jump point t (from int(n * ratio), every jump_length,
    below n - jump_length) that still has jumps left, count back up jump_length; the visited t
    are then read as step indices n - 1 - t."""
    left = {j: jump_n_sample - 1 for j in range(int(n * ratio), n - jump_length, jump_length)}
    order, t = [], n
    while t >= 1:
        t -= 1
        order.append(t)
        if left.get(t, 0) > 0:
            left[t] -= 1
            for _ in range(jump_length):
                t += 1
                order.append(t)
    return [n - 1 - t for t in order]


@torch.no_grad()
def trf_oracle(pipe, inputs, steps, *, jump_length, jump_n_sample, ratio, noise_scale=1.0,
               gmin=1.0, gmax=3.0, seed=0, broken=None):
    """TRF as its release samples, literally: at each visited index above the previous one, each
    direction takes its own Euler step (the backward one on the time-flipped latent, from the end
    frame, with SVD's per-frame guidance in its own frame order), the two x_{t-1} are weighted
    linspace(1, 0) in their own frame order, the backward flipped back, and summed; an index
    below the previous one re-noises by that one interval.

    broken: "average" (weights 0.5), "symmetric-guidance", "no-jump" (plain Euler),
    "swap-frames" (start and end conditions exchanged)."""
    model = plain_copy(pipe.unet)
    sigmas = _sigmas(pipe, steps)
    g = torch.Generator().manual_seed(seed)
    x = _x0(sigmas, inputs)
    start, end = inputs["start"], inputs["end"]
    if broken == "swap-frames":
        start, end = end, start
    scale = torch.linspace(gmin, gmax, FRAMES).view(1, -1, 1, 1, 1)
    if broken == "symmetric-guidance":
        scale = (scale + scale.flip(1)) / 2
    weight = torch.linspace(1, 0, FRAMES).view(1, -1, 1, 1, 1)
    if broken == "average":
        weight = torch.full_like(weight, 0.5)
    visits = (list(range(steps)) if broken == "no-jump"
              else release_visits(steps, jump_length, jump_n_sample, ratio))
    last = -1
    for i in visits:
        if i > last:
            s, s_next = sigmas[i], sigmas[i + 1]
            total = torch.zeros_like(x)
            for direction, cond in (("forward", start), ("backward", end)):
                xd = x if direction == "forward" else torch.flip(x, dims=(1,))
                du, dc = _clean_estimates(model, xd, s, cond, inputs["ids"])
                d = du + scale * (dc - du)
                moved = (xd + (xd - d) / s * (s_next - s)) * weight
                total = total + (moved if direction == "forward" else torch.flip(moved, dims=(1,)))
            x = total
        else:
            noise = torch.randn(x.shape, generator=g)
            x = x + (sigmas[last] ** 2 - sigmas[last + 1] ** 2) ** 0.5 * noise_scale * noise
        last = i
    return x


def _trf_fast(pipe, inputs, steps, *, dual_pass="fused", gmin=1.0, gmax=3.0, seed=0, **kw):
    sigmas = _sigmas(pipe, steps)
    denoise = InbetweenDenoiser(
        pipe.unet, inputs["start"], inputs["end"], inputs["ids"],
        guidance_per_frame(FRAMES, gmin, gmax, symmetric=False), fuse_weights(FRAMES, "linear"),
        _plans(pipe, "trf"), dual_pass=dual_pass)
    return peers.sample_trf(denoise, _x0(sigmas, inputs), sigmas,
                            generator=torch.Generator().manual_seed(seed), **kw)


TRF_TEST = dict(jump_length=2, jump_n_sample=2)  # with 4 steps and ratio 0.25: one jump, after
TRF_RATIO = 0.25                                 # step 2, back to sigma_1, steps 1 and 2 redone


@pytest.mark.parametrize("dual_pass", ["fused", "reference"])
def test_trf_follows_the_release_literally(pipe, inputs, dual_pass):
    assert release_visits(4, 2, 2, TRF_RATIO) == [0, 1, 2, 1, 0, 1, 2, 3]
    want = _once(trf_oracle, pipe, inputs, 4, ratio=TRF_RATIO, **TRF_TEST)
    got = _trf_fast(pipe, inputs, 4, dual_pass=dual_pass, repeat_step_ratio=TRF_RATIO, **TRF_TEST)
    err = (got - want).abs().max().item()
    assert err <= TOL, err


def test_trf_oracle_is_sensitive(pipe, inputs):
    base = _once(trf_oracle, pipe, inputs, 4, ratio=TRF_RATIO, **TRF_TEST)
    for broken in ("average", "symmetric-guidance", "no-jump", "swap-frames"):
        other = trf_oracle(pipe, inputs, 4, ratio=TRF_RATIO, broken=broken, **TRF_TEST)
        assert (other - base).abs().max() > 1e-2, broken


@pytest.mark.parametrize("n,length,samples,ratio", [
    (50, 5, 2, 0.8), (50, 5, 3, 0.8), (50, 4, 2, 0.5), (30, 5, 2, 0.8), (25, 5, 2, 0.8),
    (12, 3, 3, 0.2), (4, 2, 2, 0.25), (7, 1, 4, 0.0)])
def test_trf_steps_and_noise_follow_the_release_schedule(n, length, samples, ratio):
    """On a stub denoiser: the steps sample_trf takes (by sigma) and the re-noising intervals are
    the release's visiting order, and the count is trf_predictions."""
    sigmas = torch.linspace(10, 1, n + 1, dtype=torch.float64)
    sigmas[-1] = 0
    seen = []

    def denoise(x, s):
        seen.append(round(float(s), 9))
        return 0.5 * x

    peers.sample_trf(denoise, torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64), sigmas,
                     generator=torch.Generator().manual_seed(0), jump_length=length,
                     jump_n_sample=samples, repeat_step_ratio=ratio)
    visits, steps, last = release_visits(n, length, samples, ratio), [], -1
    for i in visits:
        if i > last:
            steps.append(round(float(sigmas[i]), 9))
        last = i
    assert seen == steps
    assert len(seen) == peers.trf_predictions(n, length, samples, ratio)
    if (n, length, samples, ratio) == (50, 5, 2, 0.8):
        assert peers.trf_jump_steps(50) == [9] and len(seen) == 55
        assert visits == list(range(10)) + [8, 7, 6, 5, 4] + list(range(5, 50))
    if n == 25:  # the release's defaults jump nowhere at 25 steps
        assert len(seen) == 25


def test_trf_noise_is_the_release_noise():
    """The re-noising draws: one per interval, in the release's order, sqrt(s_k^2 - s_{k+1}^2)
    times noise_scale, all from the generator (a denoiser that returns x leaves the Euler steps
    out, so the output is the initial latent plus the re-noise)."""
    n, sigmas = 6, torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    out = peers.sample_trf(lambda x, s: x, torch.zeros(1, 1, 1, 1, 3, dtype=torch.float64), sigmas,
                           generator=torch.Generator().manual_seed(3), jump_length=2,
                           jump_n_sample=3, repeat_step_ratio=0.5, noise_scale=0.9)
    g, want, last = torch.Generator().manual_seed(3), torch.zeros(1, 1, 1, 1, 3,
                                                                   dtype=torch.float64), -1
    for i in release_visits(n, 2, 3, 0.5):
        if i <= last:
            want = want + torch.randn(want.shape, generator=g, dtype=torch.float64) * 0.9 * (
                sigmas[last] ** 2 - sigmas[last + 1] ** 2) ** 0.5
        last = i
    assert torch.allclose(out, want, rtol=1e-12, atol=0) and out.abs().max() > 0


# -- ViBiD and GI-sequential --------------------------------------------------------------------
def conjugate_gradient(apply, b, x, iterations=5, eps=1e-5):
    """Conjugate gradients for apply(x) = b from x (DDS's data-consistency solve)."""
    r = b - apply(x)
    p, rs = r.clone(), (r * r).sum()
    for _ in range(iterations):
        ap = apply(p)
        a = rs / (p * ap).sum()
        x, r = x + a * p, r - a * ap
        rs_new = (r * r).sum()
        if rs_new.sqrt() < eps:
            break
        p, rs = r + rs_new / rs * p, rs_new
    return x


def dds_last_frame(estimate, latent):
    """DDS with the measurement operator A that keeps the last frame (A^T A = A): solve
    A^T A x = A^T y by conjugate gradients from the estimate, y the keyframe's latent in the
    last frame."""
    mask = torch.zeros_like(estimate)
    mask[:, -1] = 1
    y = torch.zeros_like(estimate)
    y[:, -1] = latent
    return conjugate_gradient(lambda z: mask * z, mask * y, estimate)


@torch.no_grad()
def sequential_oracle(pipe, inputs, steps, *, scale=1.0, rotated=False, dds=True, seed=0,
                      broken=None):
    """ViBiD's step (its Algorithm as the same authors write it for Zero4D, Alg. 2, and its
    release), literally: forward path x0 = D_u + w (D_c - D_u) from the start frame, DDS on the
    last frame with the end frame's latent, x_{t-1} = x0 + (s_{t-1}/s_t)(x_t - D_u) (CFG++);
    x_t = x_{t-1} + sqrt(s_t^2 - s_{t-1}^2) eps; flip; the same from the end frame with the
    start frame's latent; flip back.

    rotated: GI's backward path instead: the forward copy runs on the re-noised latent from the
    start frame and records its maps, the backward copy (backward weights) on the flipped latent
    from the end frame uses them turned by 180 degrees.

    broken: "average" (both paths from the same latent, averaged: a fused step),
    "no-flip", "swap-frames", "no-cfgpp" (the step's direction from the guided estimate),
    "no-renoise", "stale-maps" (rotated: the maps recorded by the forward step, on the latent
    before it, are used at the backward step)."""
    if rotated:
        fwd, bwd, store = _rotating_copies(pipe.unet)
    else:
        fwd = bwd = plain_copy(pipe.unet)
        store = None
    sigmas = _sigmas(pipe, steps)
    g = torch.Generator().manual_seed(seed)
    x = _x0(sigmas, inputs)
    start, end, ids = inputs["start"], inputs["end"], inputs["ids"]
    if broken == "swap-frames":
        start, end = end, start
    lat = [pipe.vae.encode(im).latent_dist.mode() * pipe.vae.config.scaling_factor
           for im in inputs["images"]]
    flip = (lambda t: t) if broken == "no-flip" else (lambda t: torch.flip(t, dims=(1,)))

    def path_step(model, x, s, s_next, cond, latent):
        du, dc = _clean_estimates(model, x, s, cond, ids)
        x0 = du + scale * (dc - du)
        if dds:
            x0 = dds_last_frame(x0, latent)
        return x0 + s_next / s * (x - (x0 if broken == "no-cfgpp" else du))

    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_before = x
        x_fwd = path_step(fwd, x, s, s_next, start, lat[1])
        noise = torch.randn(x.shape, generator=g)
        if broken == "average":
            y = flip(x)
        elif broken == "no-renoise":
            y = flip(x_fwd)
        else:
            y = flip(x_fwd + (s**2 - s_next**2) ** 0.5 * noise)
        if rotated:
            store.clear()
            _clean_estimates(fwd, x_before if broken == "stale-maps" else flip(y), s, start, ids)
            assert len(store) == 6
        x_bwd = flip(path_step(bwd, y, s, s_next, end, lat[0]))
        x = (x_fwd + x_bwd) / 2 if broken == "average" else x_bwd
    return x


def _sequential_fast(pipe, inputs, steps, *, scale=1.0, rotated=False, dds=True, seed=0,
                     dual_pass="fused", max_rows=None):
    sigmas = _sigmas(pipe, steps)
    start, end, ids = inputs["start"], inputs["end"], inputs["ids"]
    forward = PlainPath(pipe.unet, start, ids, scale, max_rows=max_rows)
    if rotated:
        backward_path = RotatedBackward(pipe.unet, start, end, ids, scale,
                                              _plans(pipe, "gi-sequential"), dual_pass=dual_pass,
                                              max_rows=max_rows)
    else:
        backward_path = PlainPath(pipe.unet, end, ids, scale, max_rows=max_rows)
    latents = {}
    if dds:
        with torch.no_grad():
            latents = dict(start_latent=peers.clean_latent(pipe.vae, inputs["images"][0]),
                           end_latent=peers.clean_latent(pipe.vae, inputs["images"][1]))
    return peers.sample_sequential(forward, backward_path, _x0(sigmas, inputs), sigmas,
                                   generator=torch.Generator().manual_seed(seed), **latents)


# Five steps (700, 135, 15.6, 0.68, 0.002, 0): enough that CFG++'s direction (scaled by
# s_{t-1}/s_t) matters far beyond the tolerance (0.034 against plain CFG here; at 3 steps, whose
# ratios are 0.022, 1.3e-4 and 0, only 1e-4); fast and literal agree to ~3e-6 at 3 to 8 steps.
STEPS = 5


@pytest.mark.parametrize("scale", [1.0, 1.6], ids=["w1", "w1.6"])
def test_vibid_follows_its_algorithm_literally(pipe, inputs, scale):
    want = _once(sequential_oracle, pipe, inputs, STEPS, scale=scale)
    got = _sequential_fast(pipe, inputs, STEPS, scale=scale)
    err = (got - want).abs().max().item()
    assert err <= TOL, err


def test_vibid_without_dds(pipe, inputs):
    want = _once(sequential_oracle, pipe, inputs, STEPS, dds=False)
    got = _sequential_fast(pipe, inputs, STEPS, dds=False)
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("dual_pass,max_rows", [("fused", None), ("fused", 2), ("reference", None)])
def test_gi_sequential_follows_the_literal_two_call_version(pipe, inputs, dual_pass, max_rows):
    want = _once(sequential_oracle, pipe, inputs, STEPS, scale=1.6, rotated=True)
    got = _sequential_fast(pipe, inputs, STEPS, scale=1.6, rotated=True, dual_pass=dual_pass,
                           max_rows=max_rows)
    err = (got - want).abs().max().item()
    assert err <= TOL, err


def test_sequential_oracles_are_sensitive(pipe, inputs):
    base = _once(sequential_oracle, pipe, inputs, STEPS, scale=1.6)
    for broken in ("average", "no-flip", "swap-frames", "no-cfgpp", "no-renoise"):
        other = sequential_oracle(pipe, inputs, STEPS, scale=1.6, broken=broken)
        assert (other - base).abs().max() > 1e-2, broken
    assert (sequential_oracle(pipe, inputs, STEPS, scale=1.6, dds=False) - base).abs().max() > 1e-2
    rotated = _once(sequential_oracle, pipe, inputs, STEPS, scale=1.6, rotated=True)
    assert (rotated - base).abs().max() > 1e-2  # GI's backward path is not ViBiD's
    stale = sequential_oracle(pipe, inputs, STEPS, scale=1.6, rotated=True, broken="stale-maps")
    assert (stale - rotated).abs().max() > 1e-2


# -- MPD ------------------------------------------------------------------------------------------
@torch.no_grad()
def mpd_oracle(pipe, inputs, steps, *, ratio, iterations, mix=1.0, seed=0, broken=None):
    """MPD's sequential release, literally: in the steps i < ratio * steps, `iterations` times:
    on the flipped latent, the backward noise starts at the end keyframe on its first frame
    ((x_bwd[0] - z_end) / s) and adds, frame by frame, the forward path's noise residuals
    (eps_fwd[f+1] - eps_fwd[f], flipped in time and negated); the backward estimate x_bwd - s eps
    gets DDS with the start keyframe on its last frame, is mixed with the forward estimate
    ((1 - mix) forward + mix backward, the paper's interpolation scale; the release: mix 1), and
    the step x0 + (s'/s)(x - D_u,fwd) is re-noised back to s. Then ViBiD's step (the oracle
    above, one step at a time).

    broken: "anchor-start" (the anchor is the start keyframe), "keep-sign" (residuals not
    negated), "no-distill"."""
    model = plain_copy(pipe.unet)
    sigmas = _sigmas(pipe, steps)
    g = torch.Generator().manual_seed(seed)
    x = _x0(sigmas, inputs)
    start, end, ids = inputs["start"], inputs["end"], inputs["ids"]
    lat = [pipe.vae.encode(im).latent_dist.mode() * pipe.vae.config.scaling_factor
           for im in inputs["images"]]
    anchor = lat[0] if broken == "anchor-start" else lat[1]

    def flip(t):
        return torch.flip(t, dims=(1,))

    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        if i < ratio * steps and broken != "no-distill":
            for _ in range(iterations):
                x_bwd = flip(x)
                du, dc = _clean_estimates(model, x, s, start, ids)
                eps_fwd = (x - dc) / s
                delta = eps_fwd[:, 1:] - eps_fwd[:, :-1]
                delta_bwd = flip(delta) if broken == "keep-sign" else -flip(delta)
                eps_bwd = torch.empty_like(eps_fwd)
                eps_bwd[:, :1] = (x_bwd[:, :1] - anchor.unsqueeze(1)) / s
                eps_bwd[:, 1:] = eps_bwd[:, :1] + torch.cumsum(delta_bwd, dim=1)
                x0_bwd = dds_last_frame(x_bwd - s * eps_bwd, lat[0])
                x0 = (1 - mix) * dc + mix * flip(x0_bwd)
                x = x0 + s_next / s * (x - du)
                x = x + (s**2 - s_next**2) ** 0.5 * torch.randn(x.shape, generator=g)
        du, dc = _clean_estimates(model, x, s, start, ids)
        x = dds_last_frame(dc, lat[1]) + s_next / s * (x - du)
        y = flip(x + (s**2 - s_next**2) ** 0.5 * torch.randn(x.shape, generator=g))
        du, dc = _clean_estimates(model, y, s, end, ids)
        x = flip(dds_last_frame(dc, lat[0]) + s_next / s * (y - du))
    return x


def _mpd_fast(pipe, inputs, steps, *, seed=0, **kw):
    sigmas = _sigmas(pipe, steps)
    start, end, ids = inputs["start"], inputs["end"], inputs["ids"]
    with torch.no_grad():
        latents = [peers.clean_latent(pipe.vae, im) for im in inputs["images"]]
    return peers.sample_mpd(PlainPath(pipe.unet, start, ids, 1.0),
                            PlainPath(pipe.unet, end, ids, 1.0), _x0(sigmas, inputs),
                            sigmas, start_latent=latents[0], end_latent=latents[1],
                            generator=torch.Generator().manual_seed(seed), **kw)


# 5 steps, the first 4 distilled twice each: distillation at sigma 700 and 135 only is washed out
# by the later steps on this tiny model (a wrong anchor moved the result by 6e-4 there); reaching
# sigma 0.68 it moves it by 0.14.
MPD_TEST = dict(ratio=0.8, iterations=2)


@pytest.mark.parametrize("mix", [1.0, 0.5])
def test_mpd_follows_its_release_literally(pipe, inputs, mix):
    want = _once(mpd_oracle, pipe, inputs, STEPS, mix=mix, **MPD_TEST)
    got = _mpd_fast(pipe, inputs, STEPS, distill_ratio=0.8, distill_iterations=2, mix=mix)
    err = (got - want).abs().max().item()
    assert err <= TOL, err


def test_mpd_oracle_is_sensitive(pipe, inputs):
    base = _once(mpd_oracle, pipe, inputs, STEPS, mix=1.0, **MPD_TEST)
    for broken in ("anchor-start", "keep-sign", "no-distill"):
        other = mpd_oracle(pipe, inputs, STEPS, broken=broken, **MPD_TEST)
        assert (other - base).abs().max() > 1e-2, broken
    assert (_once(mpd_oracle, pipe, inputs, STEPS, mix=0.5, **MPD_TEST) - base).abs().max() > 1e-2


def test_mpd_distilled_estimate_is_the_cumulative_residual_one():
    """The closed form in peers.mpd_distilled against the release's cumulative sum (float64)."""
    g = torch.Generator().manual_seed(1)
    x, d = (torch.randn(1, 7, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    z_end, s = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64), 3.7
    eps = (x - d) / s
    x_bwd, delta = x.flip(1), -(eps[:, 1:] - eps[:, :-1]).flip(1)
    eps_bwd = torch.cat([(x_bwd[:, :1] - z_end[:, None]) / s,
                         (x_bwd[:, :1] - z_end[:, None]) / s + delta.cumsum(1)], dim=1)
    assert torch.allclose(peers.mpd_distilled(d, z_end), (x_bwd - s * eps_bwd).flip(1),
                          atol=1e-12)


def test_last_frame_constraint_is_the_dds_solution():
    g = torch.Generator().manual_seed(0)
    estimate, latent = torch.randn(1, 5, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3,
                                                                            generator=g)
    got = peers._pin_last(estimate, latent)
    assert torch.allclose(got, dds_last_frame(estimate, latent), atol=1e-6)
    assert torch.equal(got[:, :-1], estimate[:, :-1]) and torch.equal(got[0, -1], latent[0])


# -- costs, seeds and names -----------------------------------------------------------------------
def _unet_batches(unet):
    sizes: list[int] = []
    handle = unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    return sizes, handle


def test_unet_calls_per_method(pipe, inputs):
    """TRF: one fused call (2 directions x [uncond, cond]) per step taken; ViBiD: two calls of 2
    rows per step; GI-sequential: a forward call of 2 rows and a fused call of 4 per step; MPD:
    ViBiD's two plus one forward call per distillation."""
    sizes, handle = _unet_batches(pipe.unet)
    try:
        _trf_fast(pipe, inputs, 4, repeat_step_ratio=TRF_RATIO, **TRF_TEST)
        assert sizes == [4] * peers.trf_predictions(4, 2, 2, TRF_RATIO) == [4] * 6
        sizes.clear()
        _sequential_fast(pipe, inputs, 2)
        assert sizes == [2, 2] * 2 and len(sizes) == peers.sequential_predictions(2)
        sizes.clear()
        _sequential_fast(pipe, inputs, 2, rotated=True)
        assert sizes == [2, 4] * 2
        sizes.clear()
        _sequential_fast(pipe, inputs, 2, rotated=True, max_rows=2)
        assert sizes == [2, 2, 2] * 2
        sizes.clear()
        _mpd_fast(pipe, inputs, 5, distill_ratio=0.8, distill_iterations=2)
        assert sizes == [2] * peers.mpd_predictions(5, 0.8, 2) == [2] * (10 + 8)
    finally:
        handle.remove()


def test_same_seed_same_result_and_the_seed_matters(pipe, inputs):
    a = _sequential_fast(pipe, inputs, 3, seed=1)
    assert torch.equal(a, _sequential_fast(pipe, inputs, 3, seed=1))
    assert (a - _sequential_fast(pipe, inputs, 3, seed=2)).abs().max() > 1e-3
    b = _trf_fast(pipe, inputs, 4, seed=1, repeat_step_ratio=TRF_RATIO, **TRF_TEST)
    assert torch.equal(b, _trf_fast(pipe, inputs, 4, seed=1, repeat_step_ratio=TRF_RATIO,
                                    **TRF_TEST))


@pytest.mark.parametrize("method", ["trf", "vibid", "gi-sequential", "mpd"])
def test_dispatch_from_the_pipeline_pieces(pipe, inputs, method):
    """The method's kind of runner (what the pipeline calls) gives the samplers above with the
    releases' settings, and counts the wrapped denoiser calls it makes."""
    steps = 5
    sigmas = _sigmas(pipe, steps)
    record = methods.method(method)
    settings = {**methods.BASE_SETTINGS, "num_frames": FRAMES, "num_inference_steps": steps}
    with torch.no_grad():
        latents = tuple(peers.clean_latent(pipe.vae, im) for im in inputs["images"])
    calls = []

    def wrap(denoise):
        def counted(x, s):
            calls.append(1)
            return denoise(x, s)
        return counted

    job = runners.Job(model=pipe.unet, method=record, settings=settings, start=inputs["start"],
                      end=inputs["end"], ids=inputs["ids"], sigmas=sigmas,
                      generator=torch.Generator().manual_seed(0), plans=_plans(pipe, method),
                      clean_latents=latents)
    got = runners.KINDS[record.kind].run(job)(wrap, _x0(sigmas, inputs))
    assert len(calls) == runners.predictions_per_video(record, settings)
    if method == "trf":
        want = _trf_fast(pipe, inputs, steps)
    elif method == "mpd":
        want = _mpd_fast(pipe, inputs, steps)
    else:
        want = _sequential_fast(pipe, inputs, steps, rotated=method == "gi-sequential")
    assert torch.equal(got, want)


def test_peer_method_records(pipe):
    """Each peer's record: its kind of sampler and its backward direction (and so its layer
    plans: the base model's, or GI's fine-tuned backward model's for gi-sequential)."""
    kinds = {m: methods.method(m).kind for m in ("trf", "trf-avg", "vibid", "gi-sequential", "mpd")}
    assert kinds == {"trf": "trf", "trf-avg": "recurrence", "vibid": "sequential",
                     "gi-sequential": "sequential", "mpd": "mpd"}
    assert all(methods.is_dual(m) for m in kinds)
    base = layer_plans("trf", pipe.unet, None)
    assert not any(p.rotate or p.backward_weights for p in base.values())
    for m in ("trf-avg", "vibid", "mpd"):
        assert layer_plans(m, pipe.unet, None) == base
    assert layer_plans("gi-sequential", pipe.unet, "rotation") == layer_plans("gi", pipe.unet,
                                                                               "rotation")
    from inbetweening.utils import InbetweeningError

    with pytest.raises(InbetweeningError, match="needs backward weights"):
        layer_plans("gi-sequential", pipe.unet, None)
