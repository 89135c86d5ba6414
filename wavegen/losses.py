"""Losses: teacher NLL, ClariNet distillation KL, multi-resolution STFT magnitude loss."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int, device: str) -> Tensor:
    return torch.hann_window(n_fft, device=device)


def stft_magnitude(x: Tensor, n_fft: int) -> Tensor:
    """(B, T) -> (B, n_fft // 2 + 1, frames) magnitude, Hann window, hop n_fft // 4."""
    spec = torch.stft(x.float(), n_fft, hop_length=n_fft // 4, win_length=n_fft,
                      window=_hann(n_fft, str(x.device)), center=True, return_complex=True)
    return spec.abs().clamp(min=1e-7)


def multi_resolution_stft_loss(x: Tensor, y: Tensor, ffts: tuple[int, ...]) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over resolutions; x, y (B, T)."""
    total = x.new_zeros(())
    for n_fft in ffts:
        mag_x, mag_y = stft_magnitude(x, n_fft), stft_magnitude(y, n_fft)
        convergence = torch.linalg.norm(mag_y - mag_x) / torch.linalg.norm(mag_y).clamp(min=1e-7)
        log_mag = torch.mean(torch.abs(torch.log(mag_y) - torch.log(mag_x)))
        total = total + convergence + log_mag
    return total / len(ffts)
