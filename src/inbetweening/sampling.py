"""Sampling: the paper's Alg. 2 as a small sampler over a denoiser, and the denoiser itself.

A *sampler* (k-diffusion style) is a function of ``denoise(x, sigma) -> x0``, a starting
latent, the sigma schedule and a noise source; it knows nothing of networks. The *denoiser*
(:class:`InbetweenDenoiser`) turns one noisy video latent into the fused clean estimate: it runs
the UNet on the forward rows (from the start frame) and the backward rows (the time-flipped latent,
from the end frame), applies per-frame classifier-free guidance, flips the backward estimate back
and fuses the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import attention
from .conditioning import edm_scalings, unet_input
from .methods import is_dual

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
                noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x_next + (s**2 - s_next**2) ** 0.5 * noise
        x = x_next
        if callback is not None and (replaced := callback(i, x)) is not None:
            x = replaced
    return x


def _renoise(x_next: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """Back from ``s_next`` to ``s``: add fresh noise of ``sqrt(s^2 - s_next^2)`` (as
    :func:`sample_euler` does, with the same draw)."""
    noise = randn_tensor(x_next.shape, generator=generator, device=x_next.device,
                         dtype=x_next.dtype)
    return x_next + (s**2 - s_next**2) ** 0.5 * noise


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
                x = _renoise(x_next, s, s_next, generator)
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
                x = _renoise(x_next, s, s_next, generator)
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


@dataclass
class KeyframeCondition:
    """What the UNet is conditioned on for one keyframe."""

    embedding: torch.Tensor  # (1, 1, D) CLIP image embedding
    latent: torch.Tensor  # (1, C, h, w) VAE latent of the noise-augmented image (unscaled)


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


class InbetweenDenoiser:
    """``denoise(x, sigma)`` for one video latent x of shape (1, F, C, h, w).

    ``dual_pass``: ``"fused"`` (one UNet call for both directions, optionally split into calls of
    at most ``max_rows`` rows, forward and backward rows kept together) or ``"reference"`` (the
    paper literally: a forward call that records explicit maps, then a backward call that uses
    them rotated).
    """

    def __init__(self, unet, method: str, start: KeyframeCondition,
                 end: KeyframeCondition | None, added_time_ids: torch.Tensor,
                 guidance: torch.Tensor | None, fuse: torch.Tensor,
                 plans: dict[str, attention.LayerPlan] | None, dual_pass: str = "fused",
                 max_rows: int | None = None):
        if dual_pass not in ("fused", "reference"):
            raise ValueError(f"dual_pass must be 'fused' or 'reference', not {dual_pass!r}")
        self.unet, self.method, self.dual = unet, method, is_dual(method)
        self.guidance, self.fuse, self.plans = guidance, fuse, plans
        self.dual_pass, self.max_rows = dual_pass, max_rows
        self.ids = added_time_ids
        cfg = guidance is not None
        conds = [start] + ([end] if self.dual else [])
        # Rows of one direction: [unconditional, conditional] under CFG (zeros for both the
        # embedding and the image latent, as SVD does), else [conditional].
        self.embeds, self.latents = [], []
        for c in conds:
            e, lat = c.embedding, c.latent
            self.embeds.append(torch.cat([torch.zeros_like(e), e]) if cfg else e)
            self.latents.append(torch.cat([torch.zeros_like(lat), lat]) if cfg else lat)

    def _unet(self, x_rows, sigma, embeds, latents):
        c_in, _, _, c_noise = edm_scalings(sigma)
        dtype = self.unet.dtype
        inp = unet_input(x_rows, c_in, latents)
        t = c_noise.reshape(1).to(x_rows.device)
        out = self.unet(inp.to(dtype), t.to(dtype), embeds.to(dtype),
                        self.ids.expand(x_rows.shape[0], -1).to(x_rows.device, dtype),
                        return_dict=False)[0]
        return out.float()

    def _predict(self, xs: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        """v predictions for each direction's rows; xs[d] is (rows_d, F, C, h, w)."""
        if not self.dual:
            with attention.phase(self.unet, "plain"):
                return [self._unet(xs[0], sigma, self.embeds[0], self.latents[0])]
        if self.dual_pass == "reference":
            with attention.phase(self.unet, "record", self.plans):
                vf = self._unet(xs[0], sigma, self.embeds[0], self.latents[0])
            with attention.phase(self.unet, "inject", self.plans):
                vb = self._unet(xs[1], sigma, self.embeds[1], self.latents[1])
            return [vf, vb]
        rows = xs[0].shape[0]
        step = rows if not self.max_rows else max(1, self.max_rows // 2)
        vf, vb = [], []
        with attention.phase(self.unet, "fused", self.plans):
            for a in range(0, rows, step):
                sl = slice(a, a + step)
                v = self._unet(torch.cat([xs[0][sl], xs[1][sl]]), sigma,
                               torch.cat([self.embeds[0][sl], self.embeds[1][sl]]),
                               torch.cat([self.latents[0][sl], self.latents[1][sl]]))
                half = v.shape[0] // 2
                vf.append(v[:half])
                vb.append(v[half:])
        return [torch.cat(vf), torch.cat(vb)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        rows = 2 if self.guidance is not None else 1
        xs = [x.expand(rows, -1, -1, -1, -1)]
        if self.dual:
            xs.append(x.flip(1).expand(rows, -1, -1, -1, -1))
        _, c_skip, c_out, _ = edm_scalings(sigma)
        estimates = []
        for xd, v in zip(xs, self._predict(xs, sigma)):
            d = c_skip * xd + c_out * v  # (rows, F, C, h, w)
            if self.guidance is not None:
                g = self.guidance.to(d.device).view(1, -1, 1, 1, 1)
                d = d[:1] + g * (d[1:] - d[:1])
            estimates.append(d)
        if not self.dual:
            return estimates[0]
        w = self.fuse.to(x.device).view(1, -1, 1, 1, 1)
        return w * estimates[0] + (1 - w) * estimates[1].flip(1)
