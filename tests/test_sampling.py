"""The sampler on denoisers without any network."""

from __future__ import annotations

import torch

from inbetweening.denoisers import fuse_weights, guidance_per_frame
from inbetweening.sampling import count_predictions, sample_euler


def _karras(n, smax=80.0, smin=0.002, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1)])


def test_euler_reaches_the_data_of_a_point_mass():
    sigmas = _karras(10)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = sample_euler(lambda x, s: torch.full_like(x, 0.25), x, sigmas)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))


def test_gaussian_data_gets_the_right_spread_with_and_without_reinjection():
    """For data N(0, c^2) the exact denoiser is c^2/(c^2+s^2) x; sampling must give std c."""
    c = 0.5
    sigmas = _karras(200)  # fine enough that Euler's discretisation error is < 0.01
    for count, fraction in ((0, 0.0), (5, 0.5)):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(20000, generator=g) * sigmas[0]
        out = sample_euler(lambda x, s: c**2 / (c**2 + s**2) * x, x, sigmas, generator=g,
                           reinject_count=count, reinject_fraction=fraction)
        assert abs(out.std().item() - c) < 0.02, (count, out.std())


def test_reinjection_counts_and_seeding():
    sigmas = _karras(12)
    calls = []

    def denoise(x, s):
        calls.append(float(s))
        return 0.9 * x

    x = torch.ones(5)
    a = sample_euler(denoise, x, sigmas, generator=torch.Generator().manual_seed(3),
                     reinject_count=5, reinject_fraction=0.5)
    assert len(calls) == count_predictions(12, 5, 0.5) == 12 + 5 * 6
    # The first 6 steps predict 6 times each at the same sigma, the rest once.
    assert calls[:6] == [float(sigmas[0])] * 6 and calls[-1] == float(sigmas[11])
    b = sample_euler(denoise, x, sigmas, generator=torch.Generator().manual_seed(3),
                     reinject_count=5, reinject_fraction=0.5)
    c = sample_euler(denoise, x, sigmas, generator=torch.Generator().manual_seed(4),
                     reinject_count=5, reinject_fraction=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_callback_can_replace_the_latent():
    sigmas = _karras(4)
    seen = []

    def cb(i, x):
        seen.append(i)
        return torch.zeros_like(x) if i == 2 else None

    out = sample_euler(lambda x, s: 0.5 * x, torch.ones(2), sigmas, callback=cb)
    assert seen == [0, 1, 2, 3] and torch.equal(out, torch.zeros(2))


def test_guidance_and_fuse_weights():
    assert guidance_per_frame(5, 1.0, 1.0, symmetric=True) is None
    torch.testing.assert_close(guidance_per_frame(5, 1.0, 3.0, False), torch.linspace(1, 3, 5))
    torch.testing.assert_close(guidance_per_frame(5, 1.0, 3.0, True), torch.full((5,), 2.0))
    torch.testing.assert_close(fuse_weights(3, "average"), torch.full((3,), 0.5))
    torch.testing.assert_close(fuse_weights(3, "linear"), torch.tensor([1.0, 0.5, 0.0]))
