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

from .sampling import Denoiser, renoise

# A path denoiser: ``denoise(x, sigma) -> (guided, unconditional)`` clean estimates of x
# (denoisers.PlainPath, denoisers.RotatedBackward).
PathDenoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# TRF's jumps as its release makes them (its other settings, e.g. its 50 steps and its re-noise
# scale, are the method's settings: inbetweening.methods).
TRF_JUMP_LENGTH, TRF_JUMP_SAMPLES, TRF_REPEAT_STEP_RATIO = 5, 2, 0.8


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
               noise_scale: float = 1.0,
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


def _sequential_step(forward, backward, x, s, s_next, generator, start_latent, end_latent, cfgpp):
    """One step of :func:`sample_sequential`."""
    ratio = s_next / s
    g, u = forward(x, s)
    x = _pin_last(g, end_latent) + ratio * (x - (u if cfgpp else g))
    y = renoise(x, s, s_next, generator).flip(1)
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
                x = renoise(x, s, s_next, generator)
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


def clean_latent(vae, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The keyframe's latent for the last-frame constraint, scaled by the VAE's scaling factor
    (the space the video latent lives in): the VAE's mode of the clean image, or with a
    ``generator`` a sample of its posterior drawn from it (as ViBiD's and MPD's releases encode
    it). images: (B, 3, H, W) in [-1, 1] -> (B, C, h, w)."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.mode() if generator is None else dist.sample(generator)
    return z.float() * vae.config.scaling_factor
