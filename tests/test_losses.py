import math

import pytest
import torch

from wavegen.distributions import gaussian_kl, gaussian_log_prob, monte_carlo_kl
from wavegen.audio import stft_distance
from wavegen.losses import distillation_kl


def test_gaussian_log_prob_matches_torch():
    x, mu, log_sigma = torch.randn(3, 50), torch.randn(3, 50), torch.randn(3, 50)
    reference = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mu, log_sigma), reference)


@pytest.mark.parametrize("mu_q, ls_q, mu_p, ls_p", [(0.3, -1.0, -0.2, -0.5), (0.0, -3.0, 0.01, -2.5),
                                                    (1.0, 0.5, 0.0, 0.0)])
def test_closed_form_kl_equals_monte_carlo(mu_q, ls_q, mu_p, ls_p):
    generator = torch.Generator().manual_seed(0)
    n = 400_000
    samples = mu_q + math.exp(ls_q) * torch.randn(n, generator=generator, dtype=torch.float64)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    mc = monte_carlo_kl(samples, lambda x: gaussian_log_prob(x, as_t(mu_q), as_t(ls_q)),
                        lambda x: gaussian_log_prob(x, as_t(mu_p), as_t(ls_p)))
    closed = gaussian_kl(as_t(mu_q), as_t(ls_q), as_t(mu_p), as_t(ls_p))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, math.exp(ls_q)),
                                                  torch.distributions.Normal(mu_p, math.exp(ls_p)))
    torch.testing.assert_close(closed, reference.double())
    assert abs(float(mc) - float(closed)) <= 0.01 * float(closed)


def test_distillation_kl_is_zero_only_when_the_gaussians_match():
    mu, ls = torch.randn(2, 100), -2 + 0.1 * torch.randn(2, 100)
    kl, reg = distillation_kl(mu, ls, mu, ls, clamp=-7.0, reg_weight=4.0)
    assert float(kl) == pytest.approx(0.0, abs=1e-6) and float(reg) == 0.0
    kl, reg = distillation_kl(mu, ls, mu + 0.1, ls - 0.5, clamp=-7.0, reg_weight=4.0)
    assert float(kl) > 0 and float(reg) == pytest.approx(4 * 0.25, rel=1e-5)
    # clamping: log-scales far below -7 count as -7
    kl_clamped, _ = distillation_kl(mu, torch.full_like(ls, -20.0), mu, torch.full_like(ls, -7.0), -7.0, 4.0)
    assert float(kl_clamped) == pytest.approx(0.0, abs=1e-6)


def test_stft_loss_sees_spectral_differences():
    t = torch.arange(8000) / 8000
    a = torch.sin(2 * torch.pi * 220 * t)[None]
    b = torch.sin(2 * torch.pi * 330 * t)[None]
    ffts = (128, 256, 512)
    assert float(stft_distance(a, a, ffts)) == pytest.approx(0.0, abs=1e-5)
    shifted = torch.roll(a, 7, dims=-1)  # same spectrum, different phase: small
    assert float(stft_distance(shifted, a, ffts)) < 0.2 * float(stft_distance(b, a, ffts))
