"""Losses: teacher NLL and ClariNet distillation KL (the multi-resolution STFT distance, also a metric, is
`wavegen.audio.stft_distance`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wavegen.distributions import gaussian_kl

NATS_TO_BITS = 1.0 / math.log(2.0)


def nll(log_prob: Tensor) -> Tensor:
    """Mean negative log-likelihood in nats per sample."""
    return -log_prob.mean()


def distillation_kl(mu_q: Tensor, log_sigma_q: Tensor, mu_p: Tensor, log_sigma_p: Tensor,
                    clamp: float, reg_weight: float) -> tuple[Tensor, Tensor]:
    """ClariNet: mean closed-form KL(q || p) per sample and the log-scale regulariser
    mean (log s_p - log s_q)^2, both with log-scales clamped below at `clamp` first."""
    log_sigma_q = torch.clamp(log_sigma_q, min=clamp)
    log_sigma_p = torch.clamp(log_sigma_p, min=clamp)
    kl = gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p).mean()
    reg = reg_weight * ((log_sigma_p - log_sigma_q) ** 2).mean()
    return kl, reg
