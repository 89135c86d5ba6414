"""Mel consistency (`wavegen.refine`): what a refinement step does to a waveform and its mel."""

import math

import pytest
import torch

from wavegen.audio import log_mel
from wavegen.config import load_preset
from wavegen.nn.envelope import smooth_bands
from wavegen.refine import REFINE_SMOOTHING, match_mel


@pytest.fixture(scope="module")
def audio():
    return load_preset("speech16k").audio  # 80 bands that resolve low harmonics


def tone(f0: float, seconds: float, rate: int, tilt: float = 1.0, noise: float = 0.003, seed: int = 0) -> torch.Tensor:
    """(1, T) harmonics of f0 below Nyquist with amplitudes tilt^k / k, and a little white noise; T is a whole
    number of 256-sample hops."""
    t = torch.arange(int(seconds * rate) // 256 * 256, dtype=torch.float64) / rate
    count = int(rate / 2 / f0 - 1e-9)
    wav = sum(tilt**k / k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, count + 1))
    wav = 0.1 * wav / wav.abs().max() + noise * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed),
                                                            dtype=torch.float64)
    return wav.float().unsqueeze(0)


def mel_error(wav: torch.Tensor, target: torch.Tensor, audio) -> float:
    return (log_mel(wav, audio) - target).abs().mean().item()


def test_each_step_brings_the_band_levels_closer_to_the_target(audio):
    frames = 60
    x = tone(150.0, frames * audio.hop_length / audio.sample_rate, audio.sample_rate, tilt=1.0)
    target = log_mel(2.0 * tone(150.0, x.shape[-1] / audio.sample_rate, audio.sample_rate, tilt=0.8, seed=1), audio)
    errors = [mel_error(match_mel(x, target, audio, steps, smoothing=0), target, audio) for steps in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0], errors
    # the default compares levels smoothed across a band: those converge, the band-to-band detail is the waveform's
    smooth = lambda wav: smooth_bands(log_mel(wav, audio), REFINE_SMOOTHING)  # noqa: E731
    errors = [(smooth(match_mel(x, target, audio, steps)) - smooth_bands(target, REFINE_SMOOTHING)).abs().mean()
              for steps in (0, 2, 8)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.15 * errors[0], errors


def test_no_step_is_the_identity_and_a_waveform_with_the_target_mel_barely_moves(audio):
    x = tone(210.0, 0.8, audio.sample_rate)
    mel = log_mel(x, audio)
    assert torch.equal(match_mel(x, mel, audio, 0), x)
    refined = match_mel(x, mel, audio, 4, smoothing=0)
    # the mel has no level for the last centred frame (it takes the one before's): only the end may move, by
    # up to a window per step
    inner = slice(0, x.shape[-1] - 4 * audio.n_fft)
    assert (refined[:, inner] - x[:, inner]).abs().max() < 1e-4 * x.abs().max()


def test_chunked_refinement_equals_one_pass(audio):
    frames = 53
    x = tone(130.0, frames * audio.hop_length / audio.sample_rate, audio.sample_rate, noise=0.02)
    target = log_mel(tone(170.0, x.shape[-1] / audio.sample_rate, audio.sample_rate, tilt=0.7), audio)
    for smoothing in (0.0, REFINE_SMOOTHING):
        whole = match_mel(x, target, audio, 3, smoothing)
        for chunk in (7, 20):
            torch.testing.assert_close(match_mel(x, target, audio, 3, smoothing, chunk_frames=chunk), whole,
                                       atol=1e-6, rtol=0)
    short = x[:, : 2 * audio.hop_length]  # shorter than half a window
    assert match_mel(short, target[..., :2], audio, 2).shape == short.shape
    with pytest.raises(ValueError, match="expected 512"):
        match_mel(short[:, 1:], target[..., :2], audio, 2)
    with pytest.raises(ValueError, match="0 or more"):
        match_mel(short, target[..., :2], audio, -1)


def test_smoothed_refinement_keeps_a_retuned_waveforms_harmonics(audio):
    """A waveform at 1.5x the mel's F0: matching every band prints the mel's own harmonics (F0 = 200 Hz) into
    it; matching the band-smoothed levels moves its envelope and leaves its harmonics (300 Hz) alone."""
    seconds, rate = 1.0, audio.sample_rate
    target = log_mel(tone(200.0, seconds, rate), audio)
    x = tone(300.0, seconds, rate, tilt=0.9)

    def old_over_new(wav: torch.Tensor) -> float:
        spectrum = torch.fft.rfft(wav[0].double()).abs()
        at = lambda hz: spectrum[round(hz * wav.shape[-1] / rate)].item()  # noqa: E731
        return sum(at(h) for h in (200.0, 400.0, 800.0)) / sum(at(h) for h in (300.0, 900.0))

    assert old_over_new(x) < 0.01
    assert old_over_new(match_mel(x, target, audio, 8, smoothing=0)) > 1.0  # the old harmonics print through
    assert old_over_new(match_mel(x, target, audio, 8, smoothing=4.0)) < 0.01
