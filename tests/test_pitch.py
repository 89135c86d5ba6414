"""Pitch: the F0 labeller, the predictor's read-out, the harmonic source and flow 0, the pitch API and CLI."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from wavegen.audio import PITCH_TRACKERS, MelError, pitch_labels, vote_labels
from wavegen.config import load_preset
from wavegen.data import CorpusError, SegmentDataset
from wavegen.models.pitch import SOURCE_RAMP, VOICED_THRESHOLD, PitchPredictor, pitch_agreement, source_voicing
from wavegen.nn import envelope, source


def tone(f0: float, seconds: float, rate: int, harmonics: int = 8) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wav = sum(0.5 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, harmonics + 1) if k * f0 < rate / 2)
    return (0.8 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    return load_preset("speech16k")


@pytest.mark.parametrize("tracker", PITCH_TRACKERS)
@pytest.mark.parametrize("f0", [100.0, 220.0, 400.0])
def test_labeller_reads_harmonic_tones_within_one_percent(speech, f0, tracker):
    labels = pitch_labels(tone(f0, 1.0, speech.audio.sample_rate), speech.audio, tracker)
    inner = labels[5:-5]  # frames whose window lies inside the tone
    assert (inner > 0).mean() > 0.95
    assert abs(np.median(inner[inner > 0]) / f0 - 1) < 0.01


def test_labeller_names_an_unknown_tracker(speech):
    with pytest.raises(ValueError, match="dio, harvest"):
        pitch_labels(np.zeros(speech.audio.sample_rate, dtype=np.float32), speech.audio, "yin")


@pytest.mark.parametrize("tracker", PITCH_TRACKERS)
def test_labeller_reads_silence_and_white_noise_as_unvoiced(speech, tracker):
    rate = speech.audio.sample_rate
    assert (pitch_labels(np.zeros(rate, dtype=np.float32), speech.audio, tracker) == 0).all()
    noise = (0.3 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)
    assert (pitch_labels(noise, speech.audio, tracker) > 0).mean() < 0.1


def test_vote_outvotes_one_tracker():
    """Frames: all agree; DIO slips an octave; Harvest slips an octave; only DIO voiced; DIO and pYIN
    voiced; only pYIN voiced; DIO 20 cents off Harvest (agreeing: DIO's value kept)."""
    dio = np.array([200.0, 400.0, 200.0, 200.0, 200.0, 0.0, 203.0])
    harvest = np.array([201.0, 200.0, 100.0, 0.0, 0.0, 0.0, 200.7])
    pyin_f0 = np.array([199.0, 201.0, 199.0, 200.0, 198.0, 200.0, 150.0])
    pyin_voiced = np.array([True, True, True, False, True, True, True])
    labels = vote_labels(dio, harvest, pyin_f0, pyin_voiced)
    np.testing.assert_allclose(labels, [200.0, 200.0, 200.0, 0.0, 200.0, 0.0, 203.0])


@pytest.mark.parametrize("f0", [100.0, 220.0, 400.0])
def test_readout_recovers_f0_between_bins_within_one_percent(speech, f0):
    model = PitchPredictor(speech.pitch)
    cents = float(model.to_cents(torch.tensor(f0)))
    logits = -0.5 * ((model.cents - cents) / 25.0) ** 2  # a peak between two bins, as training targets
    read = float(model.readout(logits.view(1, -1, 1)))
    assert abs(read / f0 - 1) < 0.01
    assert abs(1200 * math.log2(read / f0)) < 5  # and closer than a quarter bin


def test_pitch_agreement_counts_voicing_and_gross_errors():
    ref = torch.tensor([0.0, 100.0, 100.0, 200.0, 0.0])
    f0 = torch.tensor([50.0, 100.0, 106.0, 200.0, 80.0])
    voiced = torch.tensor([False, True, True, True, True])
    agreement = pitch_agreement(f0, voiced, ref)
    assert agreement["voicing_error"] == pytest.approx(0.2)
    assert agreement["gross_error"] == pytest.approx(1 / 3)  # 106 / 100 is 101 cents off
    assert agreement["median_cents"] == pytest.approx(0.0)


def test_fill_unvoiced_interpolates_gaps_in_log_f0_and_holds_the_edges():
    f0 = torch.tensor([[0.0, 100.0, 0.0, 400.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    filled = source.fill_unvoiced(f0, f0 > 0)
    torch.testing.assert_close(filled[0], torch.tensor([100.0, 100.0, 200.0, 400.0, 400.0]))
    torch.testing.assert_close(filled[1], torch.full((5,), source.UNVOICED_F0))  # exp(log(100)) rounds


def test_source_has_no_component_above_nyquist():
    rate, f0_hz = 8000, 1500.0
    f0 = torch.full((1, rate), f0_hz)
    phase, _ = source.harmonic_phase(f0, rate)
    signal = source.harmonics(phase, f0, 10, rate, cosines=False).sum(1)[0]  # only k = 1, 2 lie below 4 kHz
    spectrum = torch.fft.rfft(signal * torch.hann_window(rate)).abs()
    freqs = torch.fft.rfftfreq(rate, 1 / rate)
    allowed = (freqs - 1500).abs().lt(20) | (freqs - 3000).abs().lt(20)
    assert spectrum[~allowed].max() < 1e-3 * spectrum.max()  # aliases would sit at 3500, 1000, 500, 2000 Hz


def test_phase_carries_across_chunks_so_chunked_equals_whole():
    rate = 16000
    f0 = 120 + 80 * torch.rand(2, 5 * rate, generator=torch.Generator().manual_seed(0))
    whole, _ = source.harmonic_phase(f0, rate)
    pieces, start = [], None
    for lo in range(0, f0.shape[-1], 7777):
        piece, start = source.harmonic_phase(f0[:, lo:lo + 7777], rate, start)
        pieces.append(piece)
    chunked = torch.cat(pieces, dim=1)
    torch.testing.assert_close(source.harmonics(chunked, f0, 4, rate), source.harmonics(whole, f0, 4, rate),
                               atol=1e-5, rtol=0)


def test_harmonic_flow_streams_exactly_and_inverts(tiny):
    from wavegen.models import Student

    student = Student(tiny.student, tiny.audio).eval()
    hop, frames = tiny.audio.hop_length, 9
    # random, but as smooth across frames as a mel is (its window spans four hops); a mel drawn independently
    # per frame, which no signal has, makes the calibrated noise filter swing from frame to frame and its
    # inverse recursion lose digits
    mel = nn.functional.avg_pool1d(torch.randn(1, tiny.audio.n_mels, frames + 2), 3, stride=1) - 4
    f0 = torch.linspace(110, 240, frames)[None]
    f0[:, 3:5] = 0.0
    params = student.source_params(mel, f0, (f0 > 0).float())
    z = torch.randn(1, frames * hop, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, log_sigma, _ = student.source.excite(z, params, student.source.init_state(1))
        state, pieces = student.source.init_state(1), []
        for lo in range(0, frames, 4):
            hi = min(frames, lo + 4)
            frames_here = tuple(p[..., lo:hi + 1] for p in params)
            piece, _, state = student.source.excite(z[:, lo * hop:hi * hop], frames_here, state)
            pieces.append(piece)
        torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=0)
        recovered, log_sigma_inv = student.source.invert(whole, params)
    assert (recovered - z).abs().max() < 1e-3
    torch.testing.assert_close(log_sigma_inv, log_sigma)


def test_pitch_scaling_augmentation_scales_the_labels(speech):
    from wavegen.stages import scale_pitch

    rate, hop = speech.audio.sample_rate, speech.audio.hop_length
    wav = tone(200.0, 1.0, rate)[: rate // hop * hop]
    labels = torch.from_numpy(pitch_labels(wav, speech.audio))[None]
    shifted, scaled = scale_pitch(torch.from_numpy(wav)[None], labels, (5, 4), hop)
    measured = pitch_labels(shifted[0].numpy(), speech.audio)
    inner = slice(5, scaled.shape[-1] - 5)
    both = (measured[inner] > 0) & (scaled[0, inner].numpy() > 0)
    assert both.mean() > 0.9
    assert abs(np.median(scaled[0, inner].numpy()[both]) / 250.0 - 1) < 0.01
    assert abs(np.median(measured[inner][both]) / 250.0 - 1) < 0.01


def test_preprocess_writes_labels_and_an_old_cache_names_the_command(tiny_data, tiny, tmp_path):
    import shutil

    data = SegmentDataset(tiny_data, tiny.audio, "train", 8, pitch=True)
    wav, mel, f0 = data.crop(0, 0, 8)
    assert f0.shape == (8,) and (f0 > 0).any()
    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["pitch_labels"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match="--labels-only"):
        SegmentDataset(old, tiny.audio, "train", 8, pitch=True)
    SegmentDataset(old, tiny.audio, "train", 8)  # what needs no labels still works


def test_vocoder_pitch_and_its_bad_input_errors(tiny_checkpoint, tiny):
    from wavegen import Vocoder

    vocoder = Vocoder.load(tiny_checkpoint, device="cpu")
    f0, voicing = vocoder.pitch(torch.full((tiny.audio.n_mels, 1), -7.0))  # one frame is fine
    assert f0.shape == voicing.shape == (1, 1)
    bad = torch.full((tiny.audio.n_mels, 4), -5.0)
    bad[0, 0] = float("nan")
    for mel, message in ((bad, "NaN"), (torch.zeros(tiny.audio.n_mels + 1, 4) - 5, "mel bands")):
        with pytest.raises(MelError, match=message) as from_pitch:
            vocoder.pitch(mel)
        with pytest.raises(MelError) as from_synthesis:
            vocoder.synthesize(mel)
        assert str(from_pitch.value) == str(from_synthesis.value) and "\n" not in str(from_pitch.value)


def test_shipped_predictor_reads_tones_and_other_voices():
    """The shipped predictor on harmonic tones it never heard: 100, 220 and 400 Hz within 1 %."""
    from wavegen import Vocoder

    vocoder = Vocoder.load("default", device="cpu")
    for f0 in (100.0, 220.0, 400.0):
        predicted, voicing = vocoder.pitch(vocoder.mel(tone(f0, 1.0, vocoder.audio.sample_rate)))
        inner = predicted[0, 5:-5]
        assert (voicing[0, 5:-5] > 0.5).float().mean() > 0.9
        assert abs(float(inner[inner > 0].median()) / f0 - 1) < 0.01


def test_source_voicing_is_soft_and_full_well_below_the_voiced_threshold():
    probability = torch.tensor([0.0, SOURCE_RAMP / 2, SOURCE_RAMP, VOICED_THRESHOLD, 1.0])
    assert source_voicing(probability).tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    assert SOURCE_RAMP < VOICED_THRESHOLD


@pytest.mark.parametrize("factor", [0.8, 1.25, 1.5])
def test_a_shifted_resynthesis_measures_as_shifted(factor):
    """The shipped student on a steady voiced input (a 150 Hz harmonic tone, F0 from the mel): the output's
    F0, by the labeller, over the unshifted output's has a median within 2 % of the requested factor."""
    from wavegen import Vocoder

    vocoder = Vocoder.load("default", device="cpu")
    audio = vocoder.audio
    mel = vocoder.mel(tone(150.0, 1.0, audio.sample_rate))
    plain, shifted = (vocoder.synthesize(mel, seed=0, pitch_shift=s)[0].numpy() for s in (1.0, factor))
    a, b = pitch_labels(plain, audio), pitch_labels(shifted, audio)
    both = (a > 0) & (b > 0)
    assert both.mean() > 0.8
    assert abs(float(np.median(b[both] / a[both])) / factor - 1) < 0.02


def test_inference_imports_neither_the_losses_nor_the_corpus_code():
    """The vocoder, the app and the evaluation load what synthesis needs: the STFT distance lives in
    wavegen.audio, the file discovery evaluation shares with preprocessing in wavegen.files."""
    import subprocess
    import sys

    code = ("import sys, app, wavegen.vocoder, wavegen.contour, wavegen.evaluate; print(sorted(m for m in "
            "('wavegen.losses', 'wavegen.data', 'wavegen.train', 'wavegen.stages') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("calibrate", [False, True])
def test_a_retuned_source_reads_the_formants_not_the_old_harmonics(speech, calibrate):
    """A flat-spectrum 150 Hz tone's mel, sung at 225 Hz (x1.5): read at k x 225 Hz, the mel's own harmonic
    ripple puts every odd harmonic in a valley; retuned, the amplitudes follow the (flat) envelope, and a
    calibrating flow does not bring the old ripple back."""
    flow0 = source.HarmonicNoise(dataclasses.replace(speech.student, hn_calibrate=calibrate), speech.audio)
    rate = speech.audio.sample_rate
    t = np.arange(rate) / rate
    wav = sum(np.sin(2 * np.pi * k * 150.0 * t) for k in range(1, 20)).astype(np.float32) * 0.02
    from wavegen.audio import log_mel

    mel = log_mel(torch.from_numpy(wav)[None], speech.audio)
    f0, voicing = torch.full(mel.shape[::2], 225.0), torch.ones(mel.shape[::2])
    middle = mel.shape[-1] // 2
    with torch.no_grad():
        plain, retuned = (flow0.frame_params(mel, f0, voicing, retuned=r)[0][0, :6, middle] for r in (False, True))
    odd_over_even = lambda amp: float((amp[0] + amp[2] + amp[4]) / (amp[1] + amp[3] + amp[5]))  # noqa: E731
    assert odd_over_even(plain) < 0.6
    assert 0.75 < odd_over_even(retuned) < 1.35


def test_hann_lobe_power_is_the_windowed_sinusoid_spectrum(speech):
    """A sinusoid 0.3 bins off bin 100 under the analysis window: every bin within the lobe's reach has the power
    `hann_lobe_power` says, relative to (amplitude win / 4)^2, within 2 %; the frame smear is a symmetric partition."""
    n_fft = win = speech.audio.n_fft
    n = np.arange(win)
    position = 100.3
    spectrum = np.abs(np.fft.rfft(np.hanning(win + 1)[:-1] * 0.7 * np.cos(2 * np.pi * position * n / n_fft)))
    bins = np.arange(97, 104)
    expected = envelope.hann_lobe_power(torch.tensor(bins - position, dtype=torch.float64)).numpy() * (0.7 * win / 4) ** 2
    big = expected > 1e-3 * expected.max()
    np.testing.assert_allclose(spectrum[bins][big] ** 2, expected[big], rtol=0.02)
    smear = torch.tensor(envelope.frame_smear(speech.audio))
    assert smear.sum() == pytest.approx(1.0) and torch.allclose(smear, smear.flip(0)) and smear.argmax() == smear.numel() // 2


def voiced_mel(audio, seconds: float = 1.0) -> torch.Tensor:
    """The log-mel (1, n_mels, F) of a gliding, vowel-like tone plus some noise: a conditioning to calibrate to."""
    from wavegen.audio import log_mel

    rate = audio.sample_rate
    t = np.arange(int(seconds * rate) // audio.hop_length * audio.hop_length) / rate
    phase = 2 * np.pi * np.cumsum(140 + 40 * t) / rate
    formant = lambda k: 1.0 / (1 + ((k * 160 - 700) / 300) ** 2) + 0.3 / (1 + ((k * 160 - 2200) / 400) ** 2)  # noqa: E731
    wav = sum(formant(k) * np.sin(k * phase) for k in range(1, 40)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wav = 0.3 * wav / np.abs(wav).max() + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return log_mel(torch.from_numpy(wav.astype(np.float32))[None], audio)


def mean_output_log_mel(flow0, mel, f0, voicing, draws: int = 6) -> torch.Tensor:
    from wavegen.audio import log_mel

    params = flow0.frame_params(mel, f0, voicing)
    hop = flow0.audio.hop_length
    outputs = []
    for seed in range(draws):
        z = torch.randn(1, mel.shape[-1] * hop, generator=torch.Generator().manual_seed(seed))
        outputs.append(log_mel(flow0.excite(z, params, flow0.init_state(1))[0], flow0.audio))
    return torch.stack(outputs).mean(0), params


def test_expected_log_mel_is_what_the_harmonic_flow_produces_on_average(speech):
    """`expected_log_mel` of flow 0's frame parameters against the mean log-mel of its output over six draws of z,
    on a voiced conditioning: within 0.05 nat per band in median and without a bias beyond 0.1 (it misses a little
    of the energy between the lowest harmonics: leakage from the amplitude's own modulation)."""
    flow0 = source.HarmonicNoise(speech.student, speech.audio)
    mel = voiced_mel(speech.audio)
    frames = mel.shape[-1]
    f0, voicing = (140 + 40 * torch.arange(frames) * speech.audio.hop_length / speech.audio.sample_rate)[None], \
        torch.ones(1, frames)
    with torch.no_grad():
        actual, (amp, taps, filled) = mean_output_log_mel(flow0, mel, f0, voicing)
        expected = envelope.expected_log_mel(amp[..., :frames], taps[..., :frames], filled[..., :frames], speech.audio)
    inner = slice(3, frames - 3)
    difference = (expected - actual)[..., inner]
    assert float(difference.abs().median()) < 0.05
    assert abs(float(difference.mean())) < 0.1


def test_calibration_brings_the_output_to_the_conditioning_mel(speech):
    """With `hn_calibrate`, the mean log-mel of flow 0's output (six draws) is closer to the conditioning mel than
    the plain envelope read-out's (0.36 against 0.64 nat when written), for a flow whose learned gains are still zero.
    What is left is mostly this tone's 30 dB valleys between its lowest harmonics, which one step does not reach."""
    mel = voiced_mel(speech.audio)
    frames = mel.shape[-1]
    f0, voicing = (140 + 40 * torch.arange(frames) * speech.audio.hop_length / speech.audio.sample_rate)[None], \
        torch.ones(1, frames)
    distances = {}
    for calibrate in (False, True):
        flow0 = source.HarmonicNoise(dataclasses.replace(speech.student, hn_calibrate=calibrate), speech.audio)
        with torch.no_grad():
            actual, _ = mean_output_log_mel(flow0, mel, f0, voicing)
        distances[calibrate] = float((actual - mel)[..., 3:frames - 3].abs().mean())
    assert distances[True] < 0.65 * distances[False]
