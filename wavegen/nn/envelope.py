"""The mel's spectral envelope, read at any frequency, and the log-mel a harmonic-plus-noise signal will have.

What the student's flow 0 (`wavegen.nn.source.HarmonicNoise`) and the mel-consistency steps (`wavegen.refine`)
need from a log-mel: its envelope per linear STFT bin (`spectral_envelope`), read at harmonic frequencies
(`read_at`, or `peak_at` for an F0 that is not the mel's own), the levels smoothed across bands
(`smooth_bands`), and, for flow 0's calibration, the log-mel its frame parameters are expected to produce
(`expected_log_mel`). All per frame; no per-sample work.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from wavegen.audio import bin_band_weights, mel_filterbank
from wavegen.config import AudioConfig

@functools.lru_cache(maxsize=8)
def envelope_matrix(audio: AudioConfig) -> Tensor:
    """(n_freqs, n_mels): maps a linear mel (n_mels, F) to the mean STFT magnitude per linear bin.

    Band m of the slaney mel is sum_f W_fm |X_f|; a flat spectrum of level A gives A sum_f W_fm, so
    mel_m / sum_f W_fm is the band's mean level, and each bin takes the W-weighted mean of the levels
    of the bands it lies in. Smooth, non-negative, exact on flat spectra. Memoised: made outside inference
    mode, so training may use what an inference call cached first."""
    with torch.inference_mode(False), torch.no_grad():
        return _envelope_matrix(audio)


def _envelope_matrix(audio: AudioConfig) -> Tensor:
    band_width = mel_filterbank(audio).sum(dim=0, keepdim=True).clamp(min=1e-12)  # sum_f W_fm: level = mel_m / it
    return bin_band_weights(audio) / band_width  # bin f: the W-weighted mean over its bands


def spectral_envelope(log_mel: Tensor, audio: AudioConfig) -> Tensor:
    """(B, n_mels, F) natural-log mel -> (B, n_freqs, F) mean STFT magnitude per linear bin."""
    matrix = envelope_matrix(audio).to(log_mel.device, log_mel.dtype)
    return torch.einsum("fm,bmt->bft", matrix, torch.exp(log_mel))


PEAK_POINTS = 9  # points across +-F0 / 2 at which `peak_at` reads the envelope (F0 / 8 apart)


def peak_at(envelope: Tensor, freqs: Tensor, f0: Tensor, audio: AudioConfig) -> Tensor:
    """envelope (B, n_freqs, F), freqs (B, K, F) and f0 (B, F) in Hz -> (B, K, F): the envelope's maximum
    within f0 / 2 of each frequency (sampled at PEAK_POINTS offsets); 0 past Nyquist."""
    offsets = torch.linspace(-0.5, 0.5, PEAK_POINTS, device=freqs.device, dtype=freqs.dtype)
    reads = [read_at(envelope, freqs + d * f0.unsqueeze(1), audio) for d in offsets]
    return torch.stack(reads).amax(dim=0) * (freqs < audio.sample_rate / 2)


def read_at(envelope: Tensor, freqs: Tensor, audio: AudioConfig) -> Tensor:
    """envelope (B, n_freqs, F), freqs (B, K, F) in Hz -> (B, K, F), linear between bins; 0 past Nyquist."""
    n_freqs = envelope.shape[1]
    position = (freqs * audio.n_fft / audio.sample_rate).clamp(0, n_freqs - 1)
    lo = position.floor().long().clamp(max=n_freqs - 2)
    frac = position - lo
    a, b = torch.gather(envelope, 1, lo), torch.gather(envelope, 1, lo + 1)
    return (a + (b - a) * frac) * (freqs < audio.sample_rate / 2)


LOBE_BINS = 8  # bins on either side of a harmonic over which `expected_log_mel` spreads its power
RETUNED_SMOOTHING = 4.0  # mel bands: the Gaussian width over which a retuned calibration compares levels


def hann_lobe_power(offset: Tensor) -> Tensor:
    """Squared magnitude of a Hann window's spectrum `offset` window-bins from its peak, relative to the
    peak: (sinc(d) / (1 - d^2))^2, 1/4 at d = +-1 (main lobe +-2 bins; sidelobes below -31 dB)."""
    at_one = (offset.abs() - 1.0).abs() < 1e-4
    denominator = torch.where(at_one, torch.ones_like(offset), 1.0 - offset**2)
    return torch.where(at_one, torch.full_like(offset, 0.5), torch.sinc(offset) / denominator) ** 2


@functools.lru_cache(maxsize=8)
def frame_smear(audio: AudioConfig) -> tuple[float, ...]:
    """2 R + 1 weights: the share of the analysis window's energy (Hann squared, centred on its frame) lying
    nearest each frame offset -R..R: how an STFT frame's power mixes its neighbours' levels. Plain numbers, so
    a traced graph holds them as constants."""
    with torch.inference_mode(False), torch.no_grad():
        window = torch.hann_window(audio.win_length, periodic=True, dtype=torch.float64)
        offsets = torch.arange(audio.win_length, dtype=torch.float64) - audio.win_length // 2
        nearest = torch.round(offsets / audio.hop_length).long()
        reach = int(nearest.abs().max())
        share = torch.stack([(window[nearest == j] ** 2).sum() for j in range(-reach, reach + 1)])
        return tuple((share / share.sum()).tolist())


def smooth_bands(log_mel: Tensor, width: float) -> Tensor:
    """(B, n_mels, F) -> the same, each frame smoothed across bands by a Gaussian of standard deviation `width`
    bands (edges held): a harmonic ripple of period p bands keeps exp(-2 pi^2 width^2 / p^2) of its depth."""
    reach = int(3 * width)
    kernel = torch.exp(-0.5 * (torch.arange(-reach, reach + 1, device=log_mel.device, dtype=log_mel.dtype) / width) ** 2)
    frames = log_mel.transpose(1, 2).reshape(-1, 1, log_mel.shape[1])  # (B F, 1, n_mels)
    padded = nn.functional.pad(frames, (reach, reach), mode="replicate")
    smooth = nn.functional.conv1d(padded, (kernel / kernel.sum()).view(1, 1, -1))
    return smooth.reshape(log_mel.shape[0], log_mel.shape[2], -1).transpose(1, 2)


def expected_log_mel(amp: Tensor, taps: Tensor, f0: Tensor, audio: AudioConfig) -> Tensor:
    """The log-mel that `HarmonicNoise.excite` is expected to produce from its frame parameters: harmonic
    amplitudes amp (B, K, F), noise filter taps (B, L, F) and F0 (B, F) -> (B, n_mels, F).

    Per frame, each harmonic puts (a_k win / 4)^2 times the Hann lobe (`hann_lobe_power`) around k F0, and
    white noise through the filter h puts |H|^2 3 win / 8 in every bin; an STFT bin's expected magnitude is
    about sqrt(P_harmonic + pi / 4 P_noise) (exact for either alone: pi / 4 is the Rayleigh mean's), after the
    powers are mixed over neighbouring frames as the analysis window spans them (`frame_smear`). Measured on
    held-out files: about 0.1 nat from the mean over four draws of z of the output's log-mel, per band; it
    misses a little energy between the lowest harmonics (leakage from the levels' own modulation)."""
    batch, count, frames = amp.shape
    n_freqs, win = audio.n_fft // 2 + 1, audio.win_length
    position = torch.arange(1, count + 1, device=amp.device, dtype=amp.dtype).view(1, -1, 1) \
        * f0.unsqueeze(1) * (audio.n_fft / audio.sample_rate)  # (B, K, F) in bins
    nearest = torch.round(position).long()
    peak = (amp * (win / 4.0)) ** 2
    power = torch.zeros(batch, frames, n_freqs, device=amp.device, dtype=amp.dtype)
    for offset in range(-LOBE_BINS, LOBE_BINS + 1):
        index = nearest + offset
        inside = (index >= 0) & (index < n_freqs)
        lobe = hann_lobe_power((index - position) * (win / audio.n_fft)) * inside
        power = power.scatter_add(2, index.clamp(0, n_freqs - 1).transpose(1, 2), (peak * lobe).transpose(1, 2))
    noise = torch.fft.rfft(taps.transpose(1, 2), n=audio.n_fft).abs() ** 2 * (3.0 * win / 8.0)  # (B, F, n_freqs)
    power = (power + math.pi / 4.0 * noise).transpose(1, 2)  # (B, n_freqs, F)
    smear = frame_smear(audio)
    reach = len(smear) // 2
    padded = nn.functional.pad(power, (reach, reach), mode="replicate")
    power = sum(weight * padded[..., j:j + frames] for j, weight in enumerate(smear))
    fbank = mel_filterbank(audio).to(amp.device, amp.dtype)
    return torch.log(torch.clamp(torch.einsum("fm,bft->bmt", fbank, torch.sqrt(power)), min=audio.log_floor))
