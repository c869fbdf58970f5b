"""Sampling: the paper's Alg. 2 as a small sampler over a denoiser, and its kin.

A *sampler* (k-diffusion style) is a function of ``denoise(x, sigma) -> x0``, a starting
latent, the sigma schedule and a noise source; it knows nothing of networks. The denoisers, which
do (GI's fused two-direction estimate among them), are in :mod:`inbetweening.denoisers`; the
peers' samplers in :mod:`inbetweening.peers`.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Where the re-injected steps go: "first" (the published recipe: the first int(n * fraction)
# steps), "middle" (as many steps, centred in the run), "alternate" (every other step from the
# first, as many as fit: at most ceil(n / 2)).
REINJECT_PLACES = ("first", "middle", "alternate")


def reinject_steps(num_steps: int, reinject_fraction: float) -> int:
    """How many steps get noise re-injection (the published int(steps * 0.5))."""
    return min(max(int(num_steps * reinject_fraction), 0), num_steps)


def reinjected(num_steps: int, reinject_fraction: float, reinject_at: str = "first") -> list[bool]:
    """Whether each of ``num_steps`` steps gets re-injection (:data:`REINJECT_PLACES`)."""
    r = reinject_steps(num_steps, reinject_fraction)
    if reinject_at == "first":
        return [i < r for i in range(num_steps)]
    if reinject_at == "middle":
        a = (num_steps - r) // 2
        return [a <= i < a + r for i in range(num_steps)]
    if reinject_at == "alternate":
        return [i % 2 == 0 and i // 2 < r for i in range(num_steps)]
    raise ValueError(f"reinject_at must be one of {', '.join(REINJECT_PLACES)}, not "
                     f"{reinject_at!r}")


def count_predictions(num_steps: int, reinject_count: int, reinject_fraction: float,
                      reinject_at: str = "first") -> int:
    """Denoiser calls a sampling run makes: one per step plus one per re-injection."""
    return num_steps + reinject_count * sum(reinjected(num_steps, reinject_fraction,
                                                       reinject_at))


def renoise(x_next: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor,
            generator: torch.Generator | None) -> torch.Tensor:
    """Back from ``s_next`` to ``s``: add fresh noise of ``sqrt(s^2 - s_next^2)``, drawn from
    ``generator`` (the re-injection of every sampler here)."""
    noise = randn_tensor(x_next.shape, generator=generator, device=x_next.device,
                         dtype=x_next.dtype)
    return x_next + (s**2 - s_next**2) ** 0.5 * noise


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 generator: torch.Generator | None = None, reinject_count: int = 0,
                 reinject_fraction: float = 0.0, reinject_at: str = "first",
                 callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
                 ) -> torch.Tensor:
    """EDM Euler from ``sigmas[0]`` to ``sigmas[-1]`` with per-step recurrence.

    For each of ``int(n * reinject_fraction)`` steps (the first ones, or where ``reinject_at``
    puts them: :func:`reinjected`), the Euler step from sigma_i to sigma_{i+1} is followed
    ``reinject_count`` times by re-injecting noise of ``sqrt(sigma_i^2 - sigma_{i+1}^2)`` (back
    to sigma_i) and stepping again. All noise comes from
    ``generator``. ``callback(i, x)`` runs after each step and may return a replacement ``x``.
    """
    n = len(sigmas) - 1
    renoised = reinjected(n, reinject_fraction, reinject_at)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        repeats = reinject_count if renoised[i] else 0
        for r in range(repeats + 1):
            denoised = denoise(x, s)
            x_next = x + (x - denoised) / s * (s_next - s)
            if r < repeats:
                x = renoise(x_next, s, s_next, generator)
        x = x_next
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
    return x


@torch.no_grad()
def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None, reinject_count: int = 0,
                reinject_fraction: float = 0.0, reinject_at: str = "first",
                callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
                ) -> torch.Tensor:
    """EDM Heun (Karras et al. 2022, Alg. 1 without churn) with per-step recurrence.

    Each step from sigma_i to sigma_{i+1} is an Euler predictor followed by a trapezoidal
    corrector that predicts again at sigma_{i+1}: two predictions. A step to sigma = 0 is plain
    Euler (one prediction), as the corrector would divide by zero.

    Re-injection as in :func:`sample_euler`: for each re-injected step (:func:`reinjected`), the
    whole Heun step is followed ``reinject_count`` times by re-injecting fresh noise of
    ``sqrt(sigma_i^2 - sigma_{i+1}^2)`` (back to sigma_i) and redoing the Heun step from there.
    All noise comes from ``generator``. ``callback(i, x)`` runs after each step and may return a
    replacement ``x``.
    """
    n = len(sigmas) - 1
    renoised = reinjected(n, reinject_fraction, reinject_at)
    positive = (sigmas > 0).tolist()  # one host sync, not one per step
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        repeats = reinject_count if renoised[i] else 0
        for r in range(repeats + 1):
            d = (x - denoise(x, s)) / s
            x_next = x + d * (s_next - s)
            if positive[i + 1]:
                d_next = (x_next - denoise(x_next, s_next)) / s_next
                x_next = x + (d + d_next) / 2 * (s_next - s)
            if r < repeats:
                x = renoise(x_next, s, s_next, generator)
        x = x_next
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    generator: torch.Generator | None = None, reinject_count: int = 0,
                    reinject_fraction: float = 0.0, reinject_at: str = "first",
                    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None
                    ) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) with per-step recurrence: one prediction per step.

    In t = -log(sigma), with h = t_{i+1} - t_i and h_last = t_i - t_{i-1}, a step is
    ``x <- (sigma_{i+1} / sigma_i) x - expm1(-h) D``, where D is the denoised estimate at sigma_i
    corrected to second order by the previous one: ``D = (1 + k) D_i - k D_{i-1}``,
    ``k = h / (2 h_last)``. The first step (no previous estimate) is first order, and so is the
    step to sigma = 0, which lands on D_i.

    Re-injection as in :func:`sample_euler`: for each re-injected step (:func:`reinjected`), the
    step is followed ``reinject_count`` times by re-injecting fresh noise of
    ``sqrt(sigma_i^2 - sigma_{i+1}^2)`` (back to sigma_i) and stepping again.

    The multistep history across re-injection: D_{i-1} was predicted at the point the *first*
    attempt of step i started from (the previous step's end), so that attempt is second order as
    usual. A redone attempt starts from a freshly noised point on another trajectory, which
    D_{i-1} does not describe (extrapolating between the two would mix trajectories), so redone
    attempts are first order (equal to an Euler/DDIM step). The history handed to step i+1 is the
    prediction of the *last* attempt, made at the very point that step i+1's start was reached
    from, so step i+1 is second order again. The same holds when ``callback`` replaces ``x``:
    the next step is then first order. All noise comes from ``generator``. ``callback(i, x)``
    runs after each step and may return a replacement ``x``.
    """
    n = len(sigmas) - 1
    renoised = reinjected(n, reinject_fraction, reinject_at)
    positive = (sigmas > 0).tolist()  # one host sync, not one per step
    log_sigmas = sigmas.log()  # t = -log(sigma); -inf at sigma = 0 is never used
    previous = None  # D_{i-1}, predicted where the step to sigma_i started
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        repeats = reinject_count if renoised[i] else 0
        for r in range(repeats + 1):
            denoised = denoise(x, s)
            if not positive[i + 1]:
                x_next = denoised
            else:
                h = log_sigmas[i] - log_sigmas[i + 1]
                estimate = denoised
                if r == 0 and previous is not None:
                    k = h / (2 * (log_sigmas[i - 1] - log_sigmas[i]))
                    estimate = (1 + k) * denoised - k * previous
                x_next = (s_next / s) * x - torch.expm1(-h) * estimate
            if r < repeats:
                x = renoise(x_next, s, s_next, generator)
        x = x_next
        previous = denoised
        if callback is not None and (replaced := callback(i, x)) is not None:
            x, previous = replaced, None
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler, "heun": sample_heun, "dpmpp-2m": sample_dpmpp_2m}


def predictions(sampler_name: str, steps: int, reinject_count: int, reinject_fraction: float,
                *, reinject_at: str = "first", ends_at_zero: bool = True) -> int:
    """Denoiser calls the sampler ``SAMPLERS[sampler_name]`` makes over ``steps`` steps.

    Each step is one attempt plus ``reinject_count`` redone ones where :func:`reinjected` says.
    Euler and DPM++(2M) predict once per attempt: ``steps + c * r`` with r re-injected steps.
    Heun predicts twice per attempt except on a step to sigma = 0 (once): with the schedule ending
    at sigma = 0 (``ends_at_zero``, as the pipeline's does; only its last sigma is 0), e.g.
    ``2 * steps - 1 + c * (2 * r - [last step re-injected])``; else ``2 * (steps + c * r)``.
    """
    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler_name!r}")
    if sampler_name != "heun":
        return count_predictions(steps, reinject_count, reinject_fraction, reinject_at)
    mask = reinjected(steps, reinject_fraction, reinject_at)
    per_attempt = [1 if ends_at_zero and i == steps - 1 else 2 for i in range(steps)]
    return sum(p * (1 + reinject_count * m) for p, m in zip(per_attempt, mask))
