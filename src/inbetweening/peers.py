"""The peers: the other ways to inbetween with an image-to-video model, as small samplers.

Each is a sampler over denoisers, in the style of :func:`inbetweening.sampling.sample_euler`
(every random draw from the caller's generator), and knows nothing of networks.

``trf``  Time Reversal Fusion (Feng et al., ECCV 2024, arXiv 2403.14611) as its authors' release
    runs it: the fused denoiser is :class:`~inbetweening.sampling.InbetweenDenoiser` with the base
    model in both directions (the backward direction is the plain SVD on the time-flipped latent,
    conditioned on the end frame), SVD's per-frame guidance ``linspace(min, max)`` in each
    direction's own frame order (not symmetrised) and the linear fusion weights
    ``linspace(1, 0)`` for the forward direction; the sampler is Euler with RePaint-style jumps
    (:func:`sample_trf`): after chosen steps, the latent is re-noised back several sigma intervals
    and those steps are done again.
``vibid``  ViBiDSampler (Yang et al., ICLR 2025, arXiv 2410.05651): no fusion. Each step
    denoises along the forward path (start frame) by one step to the next sigma, re-noises back
    to the current sigma, flips the latent in time and denoises along the backward path (the same
    base model, end frame) to the next sigma, then flips back (:func:`sample_sequential`), with
    CFG++ (the step's noise direction taken from the unconditional estimate) and the last-frame
    constraint (the other keyframe's latent put in place of the last frame of each clean
    estimate).
``gi-sequential``  ViBiD's sequential schedule with GI's backward direction: fine-tuned
    backward weights and the forward maps rotated by 180 degrees. The backward step needs the
    forward direction's attention at the very latent it denoises (the re-noised one, not the one
    the forward step saw), so :class:`RotatedBackward` runs the forward rows again on that latent
    in the same fused UNet call (one call of forward + backward rows per backward step).
``mpd``  Motion Prior Distillation (Jeon et al., ICLR 2026, arXiv 2602.12679) on ViBiD, as its
    release's sequential variant runs it (:func:`sample_mpd`): in the first steps, the backward
    estimate is not denoised from the end frame but distilled from the forward one (its
    frame-to-frame noise residuals, anchored at the end keyframe), a few times at each such
    sigma, before the ViBiD step.

Where each fact comes from, and what was left out, is in ``docs/peers.md``.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import attention
from .conditioning import edm_scalings, unet_input
from .methods import SAMPLING
from .sampling import (
    Denoiser, InbetweenDenoiser, KeyframeCondition, fuse_weights, guidance_per_frame)

# A path denoiser: ``denoise(x, sigma) -> (guided, unconditional)`` clean estimates of x.
PathDenoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# The defaults of the authors' releases.
TRF_JUMP_LENGTH, TRF_JUMP_SAMPLES, TRF_REPEAT_STEP_RATIO, TRF_NOISE_SCALE = 5, 2, 0.8, 1.0
VIBID_STEPS, VIBID_CFGPP_SCALE = 25, 1.0


# -- TRF ------------------------------------------------------------------------------------------
def trf_jump_steps(num_steps: int, jump_length: int = TRF_JUMP_LENGTH,
                   repeat_step_ratio: float = TRF_REPEAT_STEP_RATIO) -> list[int]:
    """The steps after which TRF's release jumps back, in ascending order.

    Counting the steps from the end (step i is j = num_steps - 1 - i from the end), a jump follows
    the steps j = int(num_steps * repeat_step_ratio), then every ``jump_length`` further, while
    j < num_steps - jump_length. With the release's 50 steps, 5 and 0.8: after step 9 only.
    """
    first = int(num_steps * repeat_step_ratio)
    return sorted(num_steps - 1 - j for j in range(first, num_steps - jump_length, jump_length))


def trf_predictions(num_steps: int, jump_length: int = TRF_JUMP_LENGTH,
                    jump_n_sample: int = TRF_JUMP_SAMPLES,
                    repeat_step_ratio: float = TRF_REPEAT_STEP_RATIO) -> int:
    """Denoiser calls :func:`sample_trf` makes: one per step, plus ``jump_length`` per jump."""
    jumps = len(trf_jump_steps(num_steps, jump_length, repeat_step_ratio))
    return num_steps + (jump_n_sample - 1) * jump_length * jumps


@torch.no_grad()
def sample_trf(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
               generator: torch.Generator | None = None, jump_length: int = TRF_JUMP_LENGTH,
               jump_n_sample: int = TRF_JUMP_SAMPLES,
               repeat_step_ratio: float = TRF_REPEAT_STEP_RATIO,
               noise_scale: float = TRF_NOISE_SCALE,
               callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
               ) -> torch.Tensor:
    """Euler from ``sigmas[0]`` to ``sigmas[-1]`` with TRF's jumps back (RePaint-style resampling).

    Step i goes from sigma_i to sigma_{i+1} with the fused estimate ``denoise(x, sigma_i)``. After
    each step in :func:`trf_jump_steps`, ``jump_n_sample - 1`` times: re-noise back
    ``jump_length`` intervals, one at a time (from sigma_{k+1} to sigma_k add fresh noise of
    ``noise_scale * sqrt(sigma_k^2 - sigma_{k+1}^2)``, for k = i down to i - jump_length + 1),
    then do steps i - jump_length + 1 .. i again. All noise comes from ``generator``.
    ``callback(i, x)`` runs after every step done (a redone step too) and may return a
    replacement ``x``.
    """
    n = len(sigmas) - 1
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError("jump_length and jump_n_sample must be at least 1")
    jumps = set(trf_jump_steps(n, jump_length, repeat_step_ratio))

    def step(i, x):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = x + (x - denoise(x, s)) / s * (s_next - s)
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
        return x

    for i in range(n):
        x = step(i, x)
        if i not in jumps:
            continue
        for _ in range(jump_n_sample - 1):
            for k in range(i, i - jump_length, -1):
                noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + noise_scale * (sigmas[k] ** 2 - sigmas[k + 1] ** 2) ** 0.5 * noise
            for k in range(i - jump_length + 1, i + 1):
                x = step(k, x)
    return x


# -- ViBiD and GI-sequential ---------------------------------------------------------------------
def _rows(cond: KeyframeCondition, cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, image latents) of one direction's rows: [unconditional, conditional] under
    guidance (zeros for both, as SVD does), else [conditional]."""
    e, lat = cond.embedding, cond.latent
    if not cfg:
        return e, lat
    return torch.cat([torch.zeros_like(e), e]), torch.cat([torch.zeros_like(lat), lat])


def _v(unet, ids: torch.Tensor, x_rows: torch.Tensor, sigma: torch.Tensor,
       embeds: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's v prediction for rows x_rows (N, F, C, h, w) at ``sigma``."""
    c_in, _, _, c_noise = edm_scalings(sigma)
    dtype = unet.dtype
    inp = unet_input(x_rows, c_in, latents)
    t = c_noise.reshape(1).to(x_rows.device, dtype)
    out = unet(inp.to(dtype), t, embeds.to(dtype),
               ids.expand(x_rows.shape[0], -1).to(x_rows.device, dtype), return_dict=False)[0]
    return out.float()


def _guide(d: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided, unconditional) from the clean estimates of the rows; no guidance: both the
    conditional estimate."""
    if scale is None:
        return d, d
    u, c = d[:1], d[1:]
    if isinstance(scale, torch.Tensor):
        scale = scale.to(d.device).view(1, -1, 1, 1, 1)
    return u + scale * (c - u), u


class PlainPath:
    """One path of the base model: ``denoise(x, sigma) -> (guided, unconditional)`` for a latent
    x (1, F, C, h, w) conditioned on one keyframe, in x's own frame order.

    ``scale``: the guidance scale (a float, or a per-frame tensor in x's frame order) or None
    (one conditional row; both outputs are the conditional estimate). ``max_rows`` caps the rows
    of one UNet call.
    """

    def __init__(self, unet, cond: KeyframeCondition, added_time_ids: torch.Tensor, scale=None,
                 max_rows: int | None = None):
        self.unet, self.ids, self.scale, self.max_rows = unet, added_time_ids, scale, max_rows
        self.embeds, self.latents = _rows(cond, scale is not None)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor):
        rows = self.embeds.shape[0]
        xs = x.expand(rows, -1, -1, -1, -1)
        step = self.max_rows or rows
        with attention.phase(self.unet, "plain"):
            v = torch.cat([_v(self.unet, self.ids, xs[a:a + step], sigma, self.embeds[a:a + step],
                              self.latents[a:a + step]) for a in range(0, rows, step)])
        _, c_skip, c_out, _ = edm_scalings(sigma)
        return _guide(c_skip * xs + c_out * v, self.scale)


class RotatedBackward:
    """GI's backward path on its own: ``denoise(x_rev, sigma) -> (guided, unconditional)`` for
    the time-flipped latent x_rev, conditioned on the end frame, in x_rev's frame order.

    Every temporal self-attention layer follows ``plans`` (the fine-tuned backward weights; the
    forward maps rotated by 180 degrees). Those maps are the forward direction's (start frame) on
    the same noisy latent, ``x_rev.flip(1)``, so each call also runs the forward rows on it:
    ``dual_pass="fused"`` in the same UNet call (forward rows then backward rows, as
    :class:`~inbetweening.sampling.InbetweenDenoiser` does; ``max_rows`` splits it, a forward and
    its backward row kept together), ``"reference"`` as two calls with explicit maps. Under
    guidance the unconditional backward row gets the unconditional forward row's map.
    """

    def __init__(self, unet, start: KeyframeCondition, end: KeyframeCondition,
                 added_time_ids: torch.Tensor, scale, plans: dict[str, attention.LayerPlan],
                 dual_pass: str = "fused", max_rows: int | None = None):
        if dual_pass not in ("fused", "reference"):
            raise ValueError(f"dual_pass must be 'fused' or 'reference', not {dual_pass!r}")
        self.unet, self.ids, self.scale, self.plans = unet, added_time_ids, scale, plans
        self.dual_pass, self.max_rows = dual_pass, max_rows
        self.forward_rows = _rows(start, scale is not None)
        self.backward_rows = _rows(end, scale is not None)

    def __call__(self, x_rev: torch.Tensor, sigma: torch.Tensor):
        (ef, lf), (eb, lb) = self.forward_rows, self.backward_rows
        rows = ef.shape[0]
        xf = x_rev.flip(1).expand(rows, -1, -1, -1, -1)
        xb = x_rev.expand(rows, -1, -1, -1, -1)
        if self.dual_pass == "reference":
            with attention.phase(self.unet, "record", self.plans):
                _v(self.unet, self.ids, xf, sigma, ef, lf)
            with attention.phase(self.unet, "inject", self.plans):
                v = _v(self.unet, self.ids, xb, sigma, eb, lb)
        else:
            step = rows if not self.max_rows else max(1, self.max_rows // 2)
            parts = []
            with attention.phase(self.unet, "fused", self.plans):
                for a in range(0, rows, step):
                    s = slice(a, a + step)
                    out = _v(self.unet, self.ids, torch.cat([xf[s], xb[s]]), sigma,
                             torch.cat([ef[s], eb[s]]), torch.cat([lf[s], lb[s]]))
                    parts.append(out[out.shape[0] // 2:])
            v = torch.cat(parts)
        _, c_skip, c_out, _ = edm_scalings(sigma)
        return _guide(c_skip * xb + c_out * v, self.scale)


def _pin_last(estimate: torch.Tensor, latent: torch.Tensor | None) -> torch.Tensor:
    """The last-frame constraint: the clean estimate with its last frame replaced by ``latent``
    (1, C, h, w). This is ViBiD's DDS step for its masking operator: conjugate gradients on
    ||A x - y||^2 from the estimate, A keeping the last frame only, reach the exact solution in
    one iteration, and that solution leaves every other frame as it was."""
    if latent is None:
        return estimate
    return torch.cat([estimate[:, :-1], latent.to(estimate).unsqueeze(1)], dim=1)


@torch.no_grad()
def sample_sequential(forward: PathDenoiser, backward: PathDenoiser, x: torch.Tensor,
                      sigmas: torch.Tensor, *, generator: torch.Generator | None = None,
                      start_latent: torch.Tensor | None = None,
                      end_latent: torch.Tensor | None = None, cfgpp: bool = True,
                      callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
                      ) -> torch.Tensor:
    """ViBiD's bidirectional sampling: per step from sigma_i to sigma_{i+1},

    1. forward path: ``(g, u) = forward(x, s_i)``, ``g`` with its last frame set to ``end_latent``,
       ``x <- g + (s_{i+1} / s_i) (x - u)``;
    2. re-noise: ``x <- x + sqrt(s_i^2 - s_{i+1}^2) * noise`` (fresh, from ``generator``);
    3. backward path on ``y = x.flip(frames)``: ``(g, u) = backward(y, s_i)``, ``g`` with its last
       frame (the first in time) set to ``start_latent``, ``y <- g + (s_{i+1} / s_i) (y - u)``,
       ``x <- y.flip(frames)``.

    The update with u, the unconditional estimate, is CFG++ (Chung et al. 2024); with
    ``cfgpp=False`` it uses g (a plain Euler step). A latent of None skips that constraint.
    Two path predictions per step. ``callback(i, x)`` runs after each step and may return a
    replacement ``x``.
    """
    for i in range(len(sigmas) - 1):
        x = _sequential_step(forward, backward, x, sigmas[i], sigmas[i + 1], generator,
                             start_latent, end_latent, cfgpp)
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
    return x


def _renoise(x, s, s_next, generator):
    noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (s**2 - s_next**2) ** 0.5 * noise


def _sequential_step(forward, backward, x, s, s_next, generator, start_latent, end_latent, cfgpp):
    """One step of :func:`sample_sequential`."""
    ratio = s_next / s
    g, u = forward(x, s)
    x = _pin_last(g, end_latent) + ratio * (x - (u if cfgpp else g))
    y = _renoise(x, s, s_next, generator).flip(1)
    g, u = backward(y, s)
    return (_pin_last(g, start_latent) + ratio * (y - (u if cfgpp else g))).flip(1)


def sequential_predictions(num_steps: int) -> int:
    """Path-denoiser calls :func:`sample_sequential` makes: two per step."""
    return 2 * num_steps


# -- MPD (on ViBiD) ------------------------------------------------------------------------------
MPD_DISTILL_RATIO, MPD_DISTILL_ITERATIONS, MPD_MIX = 0.2, 3, 1.0


def mpd_distilled(estimate: torch.Tensor, end_latent: torch.Tensor) -> torch.Tensor:
    """MPD's backward estimate, distilled from the forward one, in time order: the backward noise
    is anchored at the end keyframe on the last frame and takes the forward path's frame-to-frame
    noise residuals for the others, which makes it the forward noise plus one offset over all
    frames, so the clean estimate is ``estimate`` moved by ``end_latent - estimate[last frame]``."""
    return estimate + (end_latent.to(estimate).unsqueeze(1) - estimate[:, -1:])


def _distilled_in_steps(num_steps: int, distill_ratio: float) -> int:
    return sum(1 for i in range(num_steps) if i < distill_ratio * num_steps)


@torch.no_grad()
def sample_mpd(forward: PathDenoiser, backward: PathDenoiser, x: torch.Tensor,
               sigmas: torch.Tensor, *, start_latent: torch.Tensor, end_latent: torch.Tensor,
               generator: torch.Generator | None = None,
               distill_ratio: float = MPD_DISTILL_RATIO,
               distill_iterations: int = MPD_DISTILL_ITERATIONS, mix: float = MPD_MIX,
               cfgpp: bool = True,
               callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
               ) -> torch.Tensor:
    """Motion Prior Distillation (Jeon et al., ICLR 2026, arXiv 2602.12679) on ViBiD's sampler,
    as its release's sequential variant runs it.

    In the steps i < ``distill_ratio * n``, before the step, ``distill_iterations`` times at
    sigma_i: ``(g, u) = forward(x, s_i)``; the distilled backward estimate
    ``b = mpd_distilled(g, end_latent)`` with its first frame set to ``start_latent``;
    ``x <- ((1 - mix) g + mix b) + (s_{i+1} / s_i)(x - u)``, then re-noised back to sigma_i. The
    end-conditioned path is not run in these iterations. Then (and in every later step) one step
    of :func:`sample_sequential`. ``mix`` is the paper's interpolation scale (the release: 1).
    """
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        if i < distill_ratio * n:
            for _ in range(distill_iterations):
                g, u = forward(x, s)
                b = _pin_last(mpd_distilled(g, end_latent).flip(1), start_latent).flip(1)
                x = (1 - mix) * g + mix * b + s_next / s * (x - (u if cfgpp else g))
                x = _renoise(x, s, s_next, generator)
        x = _sequential_step(forward, backward, x, s, s_next, generator, start_latent,
                             end_latent, cfgpp)
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
    return x


def mpd_predictions(num_steps: int, distill_ratio: float = MPD_DISTILL_RATIO,
                    distill_iterations: int = MPD_DISTILL_ITERATIONS) -> int:
    """Path-denoiser calls :func:`sample_mpd` makes: two per step, plus ``distill_iterations``
    forward calls in each distilled step."""
    return 2 * num_steps + distill_iterations * _distilled_in_steps(num_steps, distill_ratio)


def clean_latent(vae, images: torch.Tensor) -> torch.Tensor:
    """The keyframe's latent for the last-frame constraint: the VAE mode of the clean image,
    scaled by the VAE's scaling factor (the space the video latent lives in). images: (B, 3, H,
    W) in [-1, 1] -> (B, C, h, w). (ViBiD's release encodes the clean frame the same way, with a
    posterior sample for the mode.)"""
    z = vae.encode(images.to(vae.dtype)).latent_dist.mode()
    return z.float() * vae.config.scaling_factor


# -- what the pipeline dispatches to --------------------------------------------------------------
def denoisers_for(method: str, unet, start: KeyframeCondition, end: KeyframeCondition,
                  added_time_ids: torch.Tensor, *, num_frames: int, min_guidance_scale: float,
                  max_guidance_scale: float, plans: dict[str, attention.LayerPlan],
                  dual_pass: str = "fused", max_rows: int | None = None,
                  cfgpp_scale: float = VIBID_CFGPP_SCALE):
    """What a peer method samples with, from the pipeline's pieces: ``trf``: one
    InbetweenDenoiser (linear fusion; the per-frame guidance linspace(min, max) in each
    direction's own frame order, None when max <= 1); ``vibid``, ``mpd``: (forward, backward)
    :class:`PlainPath`; ``gi-sequential``: (forward :class:`PlainPath`, :class:`RotatedBackward`),
    the paths guided with CFG++ at ``cfgpp_scale``. ``plans``: ``methods.layer_plans(method,
    ...)``."""
    kind = SAMPLING.get(method)
    if kind == "trf":
        return InbetweenDenoiser(
            unet, method, start, end, added_time_ids,
            guidance_per_frame(num_frames, min_guidance_scale, max_guidance_scale,
                               symmetric=False),
            fuse_weights(num_frames, "linear"), plans, dual_pass=dual_pass, max_rows=max_rows)
    if kind not in ("sequential", "mpd"):
        raise ValueError(f"{method!r} is not sampled by a peer sampler")
    forward = PlainPath(unet, start, added_time_ids, cfgpp_scale, max_rows=max_rows)
    if method == "gi-sequential":
        return forward, RotatedBackward(unet, start, end, added_time_ids, cfgpp_scale, plans,
                                        dual_pass=dual_pass, max_rows=max_rows)
    return forward, PlainPath(unet, end, added_time_ids, cfgpp_scale, max_rows=max_rows)


def sample_peer(method: str, denoisers, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None,
                start_latent: torch.Tensor | None = None, end_latent: torch.Tensor | None = None,
                wrap: Callable = lambda denoise: denoise,
                callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
                ) -> torch.Tensor:
    """Run a peer method's sampler with its release's settings on what :func:`denoisers_for`
    gave; ``wrap`` wraps every denoiser (the pipeline's progress bar and interrupt check; it must
    return the wrapped denoiser's output unchanged). The keyframes' :func:`clean_latent` are
    needed by the sequential methods."""
    kind = SAMPLING.get(method)
    if kind == "trf":
        return sample_trf(wrap(denoisers), x, sigmas, generator=generator, callback=callback)
    forward, backward = (wrap(d) for d in denoisers)
    if start_latent is None or end_latent is None:
        raise ValueError(f"{method!r} needs both keyframes' clean latents")
    if kind == "sequential":
        return sample_sequential(forward, backward, x, sigmas, generator=generator,
                                 start_latent=start_latent, end_latent=end_latent,
                                 callback=callback)
    if kind == "mpd":
        return sample_mpd(forward, backward, x, sigmas, generator=generator,
                          start_latent=start_latent, end_latent=end_latent, callback=callback)
    raise ValueError(f"{method!r} is not sampled by a peer sampler")


def peer_predictions(method: str, num_steps: int) -> int:
    """Denoiser calls (the ``wrap``-ped ones) :func:`sample_peer` makes for ``method``."""
    kind = SAMPLING.get(method)
    if kind == "trf":
        return trf_predictions(num_steps)
    if kind == "sequential":
        return sequential_predictions(num_steps)
    if kind == "mpd":
        return mpd_predictions(num_steps)
    raise ValueError(f"{method!r} is not sampled by a peer sampler")
