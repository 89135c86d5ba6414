"""What a pitch-driven teacher reads beside its waveform: harmonics of F0, the waveform one pitch period back,
and the voicing.

Per sample t, from F0 and voicing per frame (linear between frames, `frames_to_samples`; F0 filled through
unvoiced frames, `fill_unvoiced`), the channels are, in this order:

* harmonics (`WaveNetConfig.source_harmonics` = H > 0): v_t sin(k phi_t), v_t cos(k phi_t) for k = 1..H;
* the pitch lag (`WaveNetConfig.pitch_lag`), speech coding's long-term predictor (CELP's adaptive codebook):
  v_t x(t - T0_t + k) for k = -1, 0, 1, with T0_t = sr / F0_t in samples and x read with linear interpolation
  between its two neighbouring samples (zero before sample 0);
* v_t.

The lag tells the teacher where the last glottal pulse fell, which a free-running harmonic phase cannot.
It reads x at most at t - T0_t + 2 and T0_t >= MIN_PERIOD > 2 whatever the contour, so every channel at t
depends on x_<t only: p(x_t | x_<t, mel, F0) stays an exact autoregressive density, scored in one pass.
Generation computes the channels span by span from the samples already drawn, spans of at most
`span_limit` samples (every span then reads only earlier spans).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from wavegen.config import AudioConfig, WaveNetConfig
from wavegen.nn.source import fill_unvoiced, frames_to_samples, harmonic_phase, harmonics

LAG_TAPS = (-1, 0, 1)  # x(t - T0 + k): the period's sample and its two neighbours
MIN_PERIOD = 4.0  # samples: the lag's period is never shorter, so its taps stay in the past for any contour


def pitch_input_channels(cfg: WaveNetConfig) -> int:
    """How many channels `PitchInput` gives a network of `cfg` (0: it reads no F0)."""
    if not cfg.pitch_driven:
        return 0
    return 2 * cfg.source_harmonics + (len(LAG_TAPS) if cfg.pitch_lag else 0) + 1


class PitchInput:
    """The source channels of one batch of utterances: f0 (B, F) in Hz (anything where unvoiced) and voicing
    (B, F) in [0, 1] fix everything but the waveform; `__call__(x, lo, hi)` gives the channels of samples
    [lo, hi), (B, S, hi - lo), reading the waveform x (B, >= hi) only before each sample."""

    def __init__(self, f0: Tensor, voicing: Tensor, cfg: WaveNetConfig, audio: AudioConfig):
        if not cfg.pitch_driven:
            raise ValueError("this network reads no F0")
        hop, sr = audio.hop_length, audio.sample_rate
        f0_t = frames_to_samples(fill_unvoiced(f0, voicing > 0.5), hop)  # (B, T)
        self.voicing = frames_to_samples(voicing, hop)  # (B, T)
        self.length = self.voicing.shape[-1]
        self.harmonics = None
        if cfg.source_harmonics:
            phase, _ = harmonic_phase(f0_t, sr)
            self.harmonics = harmonics(phase, f0_t, cfg.source_harmonics, sr) * self.voicing.unsqueeze(1)
        # the distance back to each lag tap, p = T0 - k, as whole samples c = ceil(p) and the weight of the
        # sample after t - c: x(t - p) = x[t - c] (1 - w) + x[t - c + 1] w with w = c - p (exact for any t)
        self.back = self.weight = None
        if cfg.pitch_lag:
            period = (sr / f0_t).clamp(min=MIN_PERIOD)  # (B, T)
            distance = torch.stack([period - k for k in LAG_TAPS], 1)  # (B, 3, T)
            back = torch.ceil(distance)
            self.back, self.weight = back.long(), back - distance

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The same channels' makings as contiguous numpy arrays for the compiled loop (`kernels._pitch_drive`):
        harmonic channels (B, 2H, T) float32, lag distances and weights (B, 3, T) int64 / float32 (empty (B, 0, T)
        without a lag), voicing (B, T) float32."""
        batch, length = self.voicing.shape

        def plain(t: Tensor | None, dtype) -> np.ndarray:
            empty = np.zeros((batch, 0, length), dtype)
            return empty if t is None else np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))
        return (plain(self.harmonics, np.float32), plain(self.back, np.int64), plain(self.weight, np.float32),
                np.ascontiguousarray(self.voicing.detach().cpu().numpy().astype(np.float32)))

    @property
    def span_limit(self) -> int | None:
        """The longest span whose channels read only samples before it (None: no lag, any span)."""
        if self.back is None:
            return None
        return max(1, int(self.back.min()) - 1)  # the latest sample read is t - back + 1

    def __call__(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """x (B, >= hi) the waveform from sample 0 -> the channels of samples [lo, hi) (B, S, hi - lo)."""
        hi = self.length if hi is None else hi
        voicing = self.voicing[:, lo:hi].unsqueeze(1)  # (B, 1, n)
        parts = [] if self.harmonics is None else [self.harmonics[..., lo:hi]]
        if self.back is not None:
            t = torch.arange(lo, hi, device=x.device)
            before = t - self.back[..., lo:hi]  # (B, 3, n): x[t - c], then x[t - c + 1]
            w = self.weight[..., lo:hi].to(x.dtype)
            rows = x.unsqueeze(1).expand(-1, len(LAG_TAPS), -1)  # (B, 3, T)
            lagged = _read(rows, before) * (1 - w) + _read(rows, before + 1) * w
            parts.append(lagged * voicing.to(x.dtype))
        parts.append(voicing.to(x.dtype))
        return torch.cat(parts, 1)


def _read(x: Tensor, index: Tensor) -> Tensor:
    """x (B, C, T) at index (B, C, n), zero where the index is before sample 0."""
    return torch.gather(x, -1, index.clamp(min=0)) * (index >= 0).to(x.dtype)

