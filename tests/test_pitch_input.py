"""The pitch-lag teacher's input: the waveform one period back, strictly from the past, in every path."""

import dataclasses

import pytest
import torch

from wavegen.models import Teacher
from wavegen.nn.pitch_input import LAG_TAPS, MIN_PERIOD, PitchInput


def lag_config(tiny, harmonics: int = 0):
    return dataclasses.replace(tiny.teacher, pitch_lag=True, source_harmonics=harmonics)


def test_the_lag_of_a_pure_tone_is_the_tone_one_period_back_and_zero_where_unvoiced(tiny):
    sr, hop = tiny.audio.sample_rate, tiny.audio.hop_length
    frames, f0 = 12, 123.4  # a period of 64.83 samples: the taps interpolate between samples
    t = torch.arange(frames * hop, dtype=torch.float64)
    x = torch.sin(2 * torch.pi * f0 * t / sr).float().unsqueeze(0)  # (1, T)
    voicing = torch.ones(1, frames)
    voicing[:, 8:] = 0.0  # unvoiced from frame 8 on (ramping down over frame 7)
    source = PitchInput(torch.full((1, frames), f0), voicing, lag_config(tiny), tiny.audio)
    channels = source(x)  # (1, 4, T)
    assert channels.shape == (1, len(LAG_TAPS) + 1, frames * hop)
    period = sr / f0
    voiced = slice(int(period) + 2, 7 * hop)  # every tap inside the signal, fully voiced
    for j, k in enumerate(LAG_TAPS):
        expected = torch.sin(2 * torch.pi * f0 * (t - period + k) / sr).float()
        # linear interpolation of a 123 Hz sine at 8 kHz: error below (pi f0 / sr)^2 / 2 ~ 1.2e-3
        torch.testing.assert_close(channels[0, j, voiced], expected[voiced], atol=2e-3, rtol=0)
    assert (channels[0, :, 8 * hop:] == 0).all()  # unvoiced: no lag and no voicing
    torch.testing.assert_close(channels[0, -1, : 7 * hop], torch.ones(7 * hop))
    assert (channels[0, :3, : int(period) - 2] == 0).all()  # before sample 0 the waveform is zero


def test_the_lag_reads_only_the_past_even_at_the_highest_pitch(tiny):
    """Gradients: channel t depends on x before t - 1 only, for every F0 up to (and beyond) the range."""
    hop = tiny.audio.hop_length
    for f0 in (60.0, 1000.0, 50_000.0):  # the last: a period shorter than MIN_PERIOD, clamped
        x = torch.randn(1, 4 * hop, requires_grad=True)
        source = PitchInput(torch.full((1, 4), f0), torch.ones(1, 4), lag_config(tiny), tiny.audio)
        period = max(MIN_PERIOD, tiny.audio.sample_rate / f0)
        for t0 in (5, 100, 200):
            source(x)[0, :, t0].sum().backward()
            assert (x.grad[0, t0 - 1:] == 0).all(), f0
            assert (x.grad[0, : t0 - 1] != 0).any() == (t0 >= period), (f0, t0)
            x.grad = None
        # a span no longer than span_limit reads only samples before it
        assert 1 <= source.span_limit <= period - 1


@pytest.mark.parametrize("harmonics", [0, 3])
def test_a_lag_teacher_is_causal_through_its_lag(tiny, harmonics):
    """A change at sample t moves no parameter at or before t, the lag channels included."""
    from tests.test_models import randomise

    teacher = randomise(Teacher(lag_config(tiny, harmonics), tiny.audio), 0.2)
    frames = 4
    f0, voicing = torch.full((1, frames), 900.0), torch.ones(1, frames)  # a period of 9 samples
    mel = torch.randn(1, tiny.audio.n_mels, frames)
    x = (0.3 * torch.randn(1, frames * tiny.audio.hop_length)).requires_grad_(True)
    params = teacher.params(x, mel, f0=f0, voicing=voicing)
    t0 = 150
    params[0, :, t0].sum().backward()
    assert (x.grad[0, t0:] == 0).all() and (x.grad[0, :t0] != 0).any()
    # and the lag is heard: the same waveform one period later changes the parameters where it is read
    with torch.no_grad():
        silent_past = x.detach().clone()
        silent_past[:, :100] = 0
        a = teacher.params(x.detach(), mel, f0=f0, voicing=voicing)
        b = teacher.params(silent_past, mel, f0=f0, voicing=voicing)
    assert not torch.allclose(a[..., 100:112], b[..., 100:112])


@pytest.mark.parametrize("compiled", [True, False])
def test_generation_at_a_high_pitch_equals_the_naive_generator(tiny, compiled):
    """F0 near the range's top makes the lag short: the compiled loop's spans shrink to it and still equal the
    step-by-step PyTorch path and the naive generator (each recomputing the lag from what it drew)."""
    from tests.test_models import randomise

    teacher = randomise(Teacher(lag_config(tiny), tiny.audio), 0.2).eval()
    frames = 3
    f0 = torch.tensor([[700.0, 950.0, 800.0], [0.0, 300.0, 650.0]])
    pitch = {"f0": f0, "voicing": (f0 > 0).float()}
    mel = torch.randn(2, tiny.audio.n_mels, frames)
    cached = teacher.generate(mel, generator=torch.Generator().manual_seed(3), compiled=compiled, **pitch)
    naive = teacher.generate_naive(mel, generator=torch.Generator().manual_seed(3), **pitch)
    assert (cached - naive).abs().max() <= 1e-4
    assert cached.std() > 0.01
    # a mel-only copy of the same weights (source weights zero) draws something else: the lag is heard
    with torch.no_grad():
        teacher.body.source.weight.zero_()
    silent = teacher.generate(mel, generator=torch.Generator().manual_seed(3), compiled=compiled, **pitch)
    assert (cached - silent).abs().max() > 1e-3
