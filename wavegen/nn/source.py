"""Pitch-driven excitation: per-frame F0 and voicing -> per-sample phase and harmonics, and the
mel's own spectral envelope, from which the student's first flow builds its harmonic-plus-noise signal.

Conventions (as the mel's): frame f is centred at sample f * hop, and a per-frame quantity is linearly
interpolated to the samples between frames f and f + 1 (`frames_to_samples`). The phase is a running
sum phi_t = phi_start + 2 pi sum_{tau <= t} F0_tau / sr, kept in float64 and wrapped to [0, 2 pi), so a
long input keeps its precision and consecutive chunks give exactly the whole pass (the caller carries
the end phase). Everything is vectorised: no Python loop over samples.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor, nn

from wavegen.config import AudioConfig, FlowConfig
from wavegen.nn.envelope import (RETUNED_SMOOTHING, expected_log_mel, peak_at, read_at, smooth_bands,
                                 spectral_envelope)

UNVOICED_F0 = 100.0  # Hz: the F0 an utterance with no voiced frame runs its (silent) phase at


def frames_to_samples(x: Tensor, hop: int) -> Tensor:
    """(..., F) per-frame values -> (..., F * hop) per-sample values, linear between frame f (at sample
    f * hop) and frame f + 1; the last frame is held. Samples of frame f depend on frames f and f + 1
    only, so a chunk of frames [a, b) needs frames [a, b + 1) to equal the whole pass (`Knots`)."""
    return Knots(torch.cat([x, x[..., -1:]], dim=-1), hop).samples()


class Knots(NamedTuple):
    """Per-sample values given at frame rate: `values` (..., F + 1) at samples 0, hop, ..., F * hop, linear
    in between, for the F * hop samples before the last knot (`frames_to_samples` holds the last frame as
    that knot). A linear map commutes with the interpolation, so a consumer that multiplies the samples by a
    matrix can multiply the F + 1 knots instead and interpolate its result (`wavegen.nn.packed`)."""

    values: Tensor
    hop: int

    @property
    def length(self) -> int:
        """The number of samples these knots describe."""
        return (self.values.shape[-1] - 1) * self.hop

    def frames(self, start: int, end: int) -> Knots:
        """The knots of frames [start, end): their samples are samples [start * hop, end * hop) of these."""
        return Knots(self.values[..., start:end + 1], self.hop)

    def ramp(self) -> Tensor:
        """(hop,) the weight of the next knot at each sample of a frame: j / hop."""
        return torch.arange(self.hop, device=self.values.device, dtype=self.values.dtype) / self.hop

    def samples(self) -> Tensor:
        """(..., F * hop) the interpolated values."""
        left, right = self.values[..., :-1], self.values[..., 1:]
        return (left.unsqueeze(-1) + (right - left).unsqueeze(-1) * self.ramp()).flatten(-2)  # (..., F, hop) first


def fill_unvoiced(f0: Tensor, voiced: Tensor) -> Tensor:
    """f0 (B, F) in Hz and voiced (B, F) bool -> (B, F) F0 with unvoiced frames filled: log-linear
    between the voiced frames around a gap, held before the first and after the last; UNVOICED_F0
    where a row has no voiced frame. The source's phase then runs smoothly through every gap."""
    batch, frames = f0.shape
    index = torch.arange(frames, device=f0.device).expand(batch, frames)
    voiced = voiced & (f0 > 0)
    log_f0 = torch.log(torch.where(voiced, f0, torch.full_like(f0, UNVOICED_F0)))
    before = torch.where(voiced, index, torch.full_like(index, -1)).cummax(dim=1).values  # last voiced <= f
    after = torch.where(voiced, index, torch.full_like(index, frames)).flip(1).cummin(dim=1).values.flip(1)
    has_before, has_after = before >= 0, after < frames
    lo = torch.gather(log_f0, 1, before.clamp(min=0))
    hi = torch.gather(log_f0, 1, after.clamp(max=frames - 1))
    span = (after - before).clamp(min=1).to(f0.dtype)
    between = lo + (hi - lo) * (index - before).to(f0.dtype) / span
    filled = torch.where(has_before & has_after, between, torch.where(has_before, lo, hi))
    filled = torch.where(has_before | has_after, filled, torch.full_like(filled, math.log(UNVOICED_F0)))
    return torch.exp(filled)


def harmonic_phase(f0: Tensor, sample_rate: int, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample f0 (B, T) in Hz -> phase (B, T) float32 in [0, 2 pi) and the end phase (B,) float64
    to start the next chunk with (`start`, default 0)."""
    steps = f0.double() * (2.0 * math.pi / sample_rate)
    phase = torch.cumsum(steps, dim=-1)
    if start is not None:
        phase = phase + start.double().unsqueeze(-1)
    phase = torch.remainder(phase, 2.0 * math.pi)
    return phase.to(f0.dtype), phase[:, -1]


def harmonics(phase: Tensor, f0: Tensor, count: int, sample_rate: int, cosines: bool = True) -> Tensor:
    """phase, f0 (B, T) -> (B, 2 count, T): sin(k phi) for k = 1..count, then cos(k phi) (unless not
    `cosines`: (B, count, T)), each zero where k f0 >= sr / 2 (no component above Nyquist)."""
    k = torch.arange(1, count + 1, device=phase.device, dtype=phase.dtype).unsqueeze(-1)  # (K, 1)
    angle = k * phase.unsqueeze(1)  # (B, K, T)
    below = (k * f0.unsqueeze(1) < sample_rate / 2).to(phase.dtype)
    if not cosines:
        return torch.sin(angle) * below
    return torch.cat([torch.sin(angle) * below, torch.cos(angle) * below], dim=1)


def minimum_phase_taps(magnitude: Tensor, taps: int, n_fft: int, dynamic_range_db: float = 50.0,
                       radius: float = 0.97) -> Tensor:
    """(B, n_freqs, F) filter magnitudes (> 0) on the rfft grid of n_fft -> (B, taps, F) causal
    minimum-phase impulse responses (cepstral folding). The first tap is exp(c_0) > 0: as a flow, it is
    the filter's sigma.

    The filter must stay invertible as a recursion (the flow's inverse runs z_t = (x_t - sum_(j >= 1)
    h_j z_(t - j)) / h_0): deep valleys put zeros near the unit circle, and cutting the response to `taps`
    moves them, so each frame's magnitude is floored `dynamic_range_db` below its peak and the cepstrum
    is liftered to taps // 2 coefficients, and tap j is scaled by radius ** j, which pulls every zero
    towards the origin by that factor (H(z / radius)): the zeros the cut pushed just outside the unit
    circle come back inside, so the inverse recursion is stable."""
    log_mag = torch.log(magnitude.clamp(min=1e-12)).transpose(1, 2)  # (B, F, n_freqs)
    floor = log_mag.amax(dim=-1, keepdim=True) - dynamic_range_db / 20.0 * math.log(10.0)
    cepstrum = torch.fft.irfft(torch.maximum(log_mag, floor), n=n_fft)  # (B, F, n_fft), real and even
    fold = torch.zeros(n_fft, device=magnitude.device, dtype=cepstrum.dtype)
    fold[0] = 1.0
    fold[1:taps // 2] = 2.0  # causal part doubled, anti-causal dropped, liftered
    spectrum = torch.exp(torch.fft.rfft(cepstrum * fold, n=n_fft))
    decay = radius ** torch.arange(taps, device=magnitude.device, dtype=cepstrum.dtype)
    return (torch.fft.irfft(spectrum, n=n_fft)[..., :taps] * decay).transpose(1, 2)  # (B, taps, F)


def time_varying_fir(z: Tensor, taps: Tensor, history: Tensor, hop: int) -> Tensor:
    """y_t = sum_j h_j(t) z_(t - j), taps h (B, L, F + 1) per frame, linear between frames (frame f at
    sample f * hop), z (B, F * hop), history (B, L - 1): the z before this chunk (zeros at the start)."""
    batch, length = z.shape
    n_taps = taps.shape[1]
    padded = torch.cat([history, z], dim=1)  # (B, L - 1 + T)
    windows = padded.unfold(1, n_taps, 1).flip(-1)  # (B, T, L): [z_t, z_(t-1), ...]
    frames = length // hop
    windows = windows.reshape(batch, frames, hop, n_taps)
    now = torch.einsum("bfhl,blf->bfh", windows, taps[..., :frames])
    nxt = torch.einsum("bfhl,blf->bfh", windows, taps[..., 1:frames + 1])
    ramp = torch.arange(hop, device=z.device, dtype=z.dtype) / hop
    return (now + (nxt - now) * ramp).reshape(batch, length)


CALIBRATION_LIMIT = 4.0  # nats: the most `HarmonicNoise` calibration moves a band's level


# Measured on held-out Asterisk files (runs of the synthesis below from the files' own mels and F0): the
# mean log-mel of the output matched the input's within 0.01 with these factors on the analytic levels
# (a harmonic of amplitude a reads as a mean bin magnitude a sr / (2 F0); white noise through H as
# |H| sqrt(pi)/2 sqrt(3 n_fft / 8) under a Hann window).
HARMONIC_SCALE = 0.47
NOISE_SCALE = 0.21
VOICED_NOISE = 0.1  # the noise's share of the envelope in voiced frames before any learning


class SourceState(NamedTuple):
    """What flow 0 carries from one chunk to the next: the phase (B,) float64 and the last
    noise_taps - 1 values of z (B, L - 1)."""

    phase: Tensor
    history: Tensor


class HarmonicNoise(nn.Module):
    """The student's first flow: x0 = z sigma0 + mu0 with parameters from the conditioning alone.

    mu0(t) = sum_k a_k(t) sin(k phi_t) + sum_(j >= 1) h_j(t) z_(t - j), sigma0(t) = h_0(t): harmonics of the
    F0 with amplitudes read from the mel's envelope at k F0, plus z through a time-varying minimum-phase
    filter shaped by the envelope (its first tap h_0 > 0 is sigma0). A frame network reads the mel, log F0
    and voicing and corrects both envelopes (log-gains per mel band, zero at initialisation, so training
    starts from the mel's own envelope). With `hn_calibrate` (FlowConfig), the levels are then moved, band by
    band and frame by frame, so that the log-mel the output is expected to have (`expected_log_mel`) is the
    conditioning mel (`calibration`): the network learns the harmonic/noise balance, the calibration holds the
    level, and with `hn_gain` one learned log-gain (`log_gain`) sets the output's level against it. Nothing
    depends on z but through the causal filter, so this is an affine autoregressive flow: log|det| = sum log
    h_0(t), and `invert` recovers z exactly (sequentially).
    """

    def __init__(self, cfg: FlowConfig, audio: AudioConfig):
        super().__init__()
        self.audio, self.taps, self.calibrate = audio, cfg.noise_taps, cfg.hn_calibrate
        self.count = int(audio.sample_rate / 2 / cfg.f0_min)  # harmonics of the lowest F0 below Nyquist
        self.net = nn.Sequential(
            nn.Conv1d(cfg.n_mels + 2, cfg.hn_channels, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(cfg.hn_channels, cfg.hn_channels, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(cfg.hn_channels, 2 * cfg.n_mels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        # with `hn_gain`: one learned log-gain on both levels after the calibration (the harmonics and every noise
        # tap, so log sigma0 moves with it): the output level relative to the calibrated one, zero at the start
        self.log_gain = nn.Parameter(torch.zeros(())) if cfg.hn_gain else None
        self.noise_norm = math.sqrt(math.pi) / 2 * math.sqrt(3 * audio.n_fft / 8)

    def frame_params(self, mel: Tensor, f0: Tensor, voicing: Tensor, retuned: bool = False
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """mel (B, n_mels, F), f0 (B, F) in Hz (0 or anything where unvoiced), voicing (B, F) in [0, 1] ->
        per frame, with the last frame repeated (F + 1 frames, what `excite` interpolates between):
        harmonic amplitudes (B, K, F + 1), noise filter taps (B, L, F + 1), filled F0 (B, F + 1).

        `retuned`: f0 is not the pitch the mel was made with (a pitch shift, a caller's own contour). The low
        bands of a mel resolve the speaker's harmonics, so its envelope ripples at the old F0; read at k times a
        new F0 it would put some harmonics in its valleys (at 1.5x, every odd one: the pitch heard doubles).
        Retuned, each amplitude is the envelope's maximum within F0 / 2 of k F0 instead: the formants stay,
        the old harmonics do not print through."""
        f0 = fill_unvoiced(f0, voicing > 0.5)
        features = torch.cat([mel, torch.log(f0 / 100.0).unsqueeze(1), voicing.unsqueeze(1)], dim=1)
        gain_h, gain_n = self.net(features).chunk(2, dim=1)  # (B, n_mels, F) log-gains each
        gain_n = gain_n + torch.log(1.0 - (1.0 - VOICED_NOISE) * voicing).unsqueeze(1)  # the noise's share
        amp, taps = self._levels(mel, gain_h, gain_n, f0, voicing, retuned)
        if self.calibrate:
            amp, taps = self._levels(mel + self.calibration(mel, amp, taps, f0, retuned), gain_h, gain_n, f0,
                                     voicing, retuned)
        if self.log_gain is not None:
            gain = torch.exp(self.log_gain)
            amp, taps = amp * gain, taps * gain
        last = lambda x: torch.cat([x, x[..., -1:]], dim=-1)  # noqa: E731
        return last(amp), last(taps), last(f0)

    def _levels(self, mel: Tensor, gain_h: Tensor, gain_n: Tensor, f0: Tensor, voicing: Tensor, retuned: bool
                ) -> tuple[Tensor, Tensor]:
        """Harmonic amplitudes (B, K, F) and noise taps (B, L, F) from the envelopes of mel + gain_h and
        mel + gain_n (B, n_mels, F), at the filled F0 (B, F) times voicing (B, F) for the harmonics."""
        harmonic_env = spectral_envelope(mel + gain_h, self.audio)  # (B, n_freqs, F)
        noise_env = spectral_envelope(mel + gain_n, self.audio)
        k = torch.arange(1, self.count + 1, device=mel.device, dtype=mel.dtype).view(1, -1, 1)
        freqs = k * f0.unsqueeze(1)  # (B, K, F)
        amp = peak_at(harmonic_env, freqs, f0, self.audio) if retuned else read_at(harmonic_env, freqs, self.audio)
        amp = amp * (HARMONIC_SCALE * 2.0 / self.audio.sample_rate) * (f0 * voicing).unsqueeze(1)
        taps = minimum_phase_taps(noise_env * (NOISE_SCALE / self.noise_norm), self.taps, self.audio.n_fft)
        return amp, taps

    def calibration(self, mel: Tensor, amp: Tensor, taps: Tensor, f0: Tensor, retuned: bool) -> Tensor:
        """(B, n_mels, F) log-gains that bring the expected log-mel of the output (`expected_log_mel` of amp,
        taps, f0) to the conditioning mel: one correction step, which the flow then applies to both
        envelopes. The envelope read-out is a smoothed, time-blurred guess of the levels; switched on at inference
        in student v4 (2026-12-01; 21 held-out files, two seeds each, aiming 0.22 nat below the mel for what
        its WaveNet flows had learnt to add) this step alone took PESQ-wb from 2.30 to 2.41.

        Retuned, the mel's low bands ripple at the old F0 and the harmonics no longer line up with it, so both
        sides are smoothed across bands first (`smooth_bands`): the levels follow, the old harmonics do not."""
        expected = expected_log_mel(amp, taps, f0, self.audio)
        if retuned:
            mel, expected = smooth_bands(mel, RETUNED_SMOOTHING), smooth_bands(expected, RETUNED_SMOOTHING)
        return (mel - expected).clamp(-CALIBRATION_LIMIT, CALIBRATION_LIMIT)

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> SourceState:
        return SourceState(torch.zeros(batch, dtype=torch.float64, device=device),
                           torch.zeros(batch, self.taps - 1, device=device))

    def excite(self, z: Tensor, params: tuple[Tensor, Tensor, Tensor], state: SourceState
               ) -> tuple[Tensor, Tensor, SourceState]:
        """z (B, F * hop) and the `frame_params` of its frames plus the next (F + 1) -> x0 (B, T), log sigma0
        (B, T) and the state after z. Consecutive chunks give exactly the whole pass."""
        harmonic, log_sigma, end = self._conditioned(params, z.shape[-1], state.phase)
        x0 = time_varying_fir(z, params[1], state.history, self.audio.hop_length) + harmonic
        history = torch.cat([state.history, z], dim=1)[:, -(self.taps - 1):]
        return x0, log_sigma, SourceState(end, history)

    def _conditioned(self, params: tuple[Tensor, Tensor, Tensor], length: int, phase: Tensor | None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """What depends on the conditioning alone, for `length` samples from `phase`: the harmonic sum
        (B, T), log sigma0 = log h_0(t) (B, T) and the end phase (B,)."""
        amp, taps, f0 = params
        hop = self.audio.hop_length
        f0_t = frames_to_samples(f0, hop)[:, :length]  # (B, T)
        phase, end = harmonic_phase(f0_t, self.audio.sample_rate, phase)
        sigma = frames_to_samples(taps[:, 0], hop)[:, :length]
        return self.harmonic(phase, f0_t, amp), torch.log(sigma), end

    def channels(self, params: tuple[Tensor, Tensor, Tensor], length: int, phase: Tensor | None, count: int
                 ) -> Tensor:
        """The source the WaveNet flows read beside x: sin(k phi_t) and cos(k phi_t) for k = 1..count (B, 2 count,
        T), each zero where k F0 >= sr / 2, on the same phase as `excite`'s harmonics for `length` samples from
        `phase` (None: the start), so consecutive chunks give the whole pass."""
        f0_t = frames_to_samples(params[2], self.audio.hop_length)[:, :length]  # (B, T)
        phase_t, _ = harmonic_phase(f0_t, self.audio.sample_rate, phase)
        return harmonics(phase_t, f0_t, count, self.audio.sample_rate)

    def harmonic(self, phase: Tensor, f0: Tensor, amp: Tensor) -> Tensor:
        """phase, f0 (B, T) and per-frame amplitudes (B, K, F + 1) -> sum_k a_k(t) sin(k phi_t) (B, T), over
        k f0 < sr / 2 only. Only the harmonics the lowest F0 here puts below Nyquist are computed (the rest
        are zero): a 200 Hz voice needs 40 of the 160 that 50 Hz would."""
        count = self.count  # a traced graph (`wavegen export`) keeps them all: the cut depends on the data
        if f0.numel() and not torch.jit.is_tracing():
            count = min(count, int(self.audio.sample_rate / 2 / float(f0.min())) + 1)
        amp = frames_to_samples(amp[:, :count], self.audio.hop_length)
        amp = amp[..., : phase.shape[-1]]  # (B, count, T)
        return (amp * harmonics(phase, f0, count, self.audio.sample_rate, cosines=False)).sum(dim=1)

    @torch.no_grad()
    def invert(self, x0: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """x0 (B, T) -> z (B, T) and log sigma0 (B, T), from the start of the sequence; sequential in t
        (z_t needs z_<t through the filter), compiled."""
        harmonic, log_sigma, _ = self._conditioned(params, x0.shape[-1], None)
        z = _invert_fir((x0 - harmonic).double().numpy(), params[1].double().numpy(), self.audio.hop_length)
        return torch.from_numpy(z).to(x0.dtype), log_sigma


@numba.njit(cache=True)
def _invert_fir(y, taps, hop):  # pragma: no cover - compiled
    """z from y_t = sum_j h_j(t) z_(t - j), h(t) linear between frame taps (B, L, F + 1)."""
    batch, length = y.shape
    n_taps = taps.shape[1]
    z = np.zeros_like(y)
    for b in range(batch):
        for t in range(length):
            f, w = t // hop, (t % hop) / hop
            acc = y[b, t]
            for j in range(1, min(n_taps, t + 1)):
                acc -= ((1.0 - w) * taps[b, j, f] + w * taps[b, j, f + 1]) * z[b, t - j]
            z[b, t] = acc / ((1.0 - w) * taps[b, 0, f] + w * taps[b, 0, f + 1])
    return z
