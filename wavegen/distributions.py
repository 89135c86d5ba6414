"""Per-sample output distributions: Gaussian and discretised mixture of logistics.

All functions work elementwise on (B, T) tensors (the mixture on (B, 3M, T) parameters).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(x; mu, exp(log_sigma)^2), elementwise."""
    return -0.5 * LOG_2PI - log_sigma - 0.5 * ((x - mu) * torch.exp(-log_sigma)) ** 2


def gaussian_kl(mu_q: Tensor, log_sigma_q: Tensor, mu_p: Tensor, log_sigma_p: Tensor) -> Tensor:
    """KL(q || p) of two Gaussians, elementwise:
    log s_p - log s_q + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2."""
    var_ratio = torch.exp(2.0 * (log_sigma_q - log_sigma_p))
    mean_term = ((mu_q - mu_p) * torch.exp(-log_sigma_p)) ** 2
    return log_sigma_p - log_sigma_q + 0.5 * (var_ratio + mean_term) - 0.5


def monte_carlo_kl(samples: Tensor, log_q: Callable[[Tensor], Tensor], log_p: Callable[[Tensor], Tensor]) -> Tensor:
    """KL(q || p) ~ mean over samples x ~ q of log q(x) - log p(x); for teachers with no closed form.

    samples: (N, ...) drawn from q; returns the estimate per element of `...`.
    """
    return (log_q(samples) - log_p(samples)).mean(dim=0)


def split_mixture(params: Tensor, log_scale_min: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3M, T) -> logit_probs, means, log_scales, each (B, M, T)."""
    logits, means, log_scales = params.chunk(3, dim=1)
    return logits, means, torch.clamp(log_scales, min=log_scale_min)


def mol_log_prob(x: Tensor, params: Tensor, log_scale_min: float, num_classes: int = 65536) -> Tensor:
    """Discretised mixture of logistics (PixelCNN++) over num_classes levels in [-1, 1].

    x (B, T) in [-1, 1], params (B, 3M, T) -> log-probability (B, T) of x's bin.
    """
    logits, means, log_scales = split_mixture(params, log_scale_min)
    x = x.unsqueeze(1)  # (B, 1, T)
    centred = x - means
    inv_s = torch.exp(-log_scales)
    half_bin = 1.0 / (num_classes - 1)
    plus, minus = inv_s * (centred + half_bin), inv_s * (centred - half_bin)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for the lowest bin
    log_one_minus_cdf_min = -F.softplus(minus)  # log (1 - sigmoid(minus)), for the highest bin
    mid = inv_s * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)  # density at the bin centre
    inner = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                        log_pdf_mid - math.log((num_classes - 1) / 2))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    return torch.logsumexp(log_probs + F.log_softmax(logits, dim=1), dim=1)


def mol_sample(params: Tensor, log_scale_min: float, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
    """(B, 3M, T) -> (B, T) samples in [-1, 1]; temperature scales the logistic noise."""
    logits, means, log_scales = split_mixture(params, log_scale_min)
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-5, 1 - 1e-5)
    choice = (logits - torch.log(-torch.log(u))).argmax(dim=1, keepdim=True)  # Gumbel-max, (B, 1, T)
    mean = means.gather(1, choice).squeeze(1)
    log_scale = log_scales.gather(1, choice).squeeze(1)
    v = torch.rand(mean.shape, generator=generator, device=mean.device).clamp(1e-5, 1 - 1e-5)
    x = mean + temperature * torch.exp(log_scale) * (torch.log(v) - torch.log1p(-v))
    return x.clamp(-1.0, 1.0)
