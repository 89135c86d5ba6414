"""What `wavegen eval` reports beyond the medians: the files a model loses, per voice and per F0 band."""

import math

import pytest

from wavegen.evaluate import breakdown, f0_band, reference_voices


def row(pesq: float, stoi: float = 0.9, stft: float = 1.0) -> dict[str, float]:
    return {"pesq_wb": pesq, "stoi": stoi, "stft": stft}


def test_breakdown_names_the_lost_files_and_splits_by_voice_and_f0_band():
    files = {"a/1.wav": (2.0, 3.0, 100.0), "a/2.wav": (3.0, 2.5, 110.0), "b/1.wav": (2.5, 2.4, 250.0),
             "b/2.wav": (2.2, 2.1, math.nan)}  # (student, Griffin-Lim, reference F0)
    report = {"student": {"files": {f: row(s, stoi=0.95) for f, (s, _, _) in files.items()}},
              "griffin-lim": {"files": {f: row(g) for f, (_, g, _) in files.items()}},
              "reference_f0_hz": {f: hz for f, (_, _, hz) in files.items()}}
    voices = {f: f.split("/")[0] for f in files}
    table = breakdown(report, voices, "student")
    assert [r["file"] for r in table["losses"]] == ["a/1.wav"]  # the only file below Griffin-Lim
    assert table["voice"]["a"]["files"] == 2 and table["voice"]["a"]["losses"] == 1
    assert table["voice"]["a"]["student"]["pesq_wb"] == pytest.approx(2.5)  # median of 2.0 and 3.0
    assert table["voice"]["b"]["griffin-lim"]["pesq_wb"] == pytest.approx(2.25)
    assert table["voice"]["b"]["student"]["stoi"] == pytest.approx(0.95)
    assert set(table["f0_band"]) == {"< 120 Hz", "> 200 Hz", "unvoiced"}
    assert table["f0_band"]["< 120 Hz"]["files"] == 2 and table["f0_band"]["< 120 Hz"]["losses"] == 1


def test_f0_bands_and_voices_of_a_corpus(tmp_path):
    assert [f0_band(hz) for hz in (80.0, 119.9, 120.0, 199.0, 200.0, 400.0, math.nan)] == [
        "< 120 Hz", "< 120 Hz", "120-200 Hz", "120-200 Hz", "> 200 Hz", "> 200 Hz", "unvoiced"]
    for rel in ("en_US/digits/1.wav", "it_IT/2.wav", "top.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    voices = reference_voices(tmp_path)
    assert {p.relative_to(tmp_path).as_posix(): v for p, v in voices.items()} == {
        "en_US/digits/1.wav": "en_US", "it_IT/2.wav": "it_IT", "top.wav": "-"}


def test_the_speed_peer_is_hifigan_v3_sized_and_gives_one_sample_per_hop():
    """The paper's V3: 1.46 M parameters at 80 bands and hop 256 (strides 8, 8, 4); another hop changes the last
    stride; a hop that is not a multiple of 64 is refused."""
    import torch

    from wavegen.nn.hifigan import HiFiGANGenerator

    peer = HiFiGANGenerator(80, 256)
    assert sum(p.numel() for p in peer.parameters()) == pytest.approx(1.46e6, rel=0.01)
    with torch.inference_mode():
        assert HiFiGANGenerator(80, 256)(torch.randn(2, 80, 7)).shape == (2, 7 * 256)
        assert HiFiGANGenerator(20, 64)(torch.randn(1, 20, 5)).shape == (1, 5 * 64)
    with pytest.raises(ValueError, match="multiple of 64"):
        HiFiGANGenerator(80, 200)


def test_buzz_tells_harmonics_above_4_khz_from_noise_there():
    """`high_band_periodicity` is high for a harmonic band and low for noise, whatever the level, and tolerates a
    5 % F0 error; `buzz` is 0 for the reference itself and positive for harmonics where the reference has noise."""
    import numpy as np

    from wavegen.config import load_preset
    from wavegen.evaluate import buzz, high_band_periodicity

    audio = load_preset("speech16k").audio
    rate, f0 = audio.sample_rate, 150.0
    t = np.arange(rate) / rate
    harmonic = 0.02 * sum(np.sin(2 * np.pi * k * f0 * t + k) for k in range(1, int(rate / 2 / f0) + 1))
    noise = 0.1 * np.random.default_rng(0).standard_normal(rate)
    labels = np.full(rate // audio.hop_length, f0)
    tonal, noisy = (np.median(high_band_periodicity(x.astype(np.float32), labels, audio)) for x in (harmonic, noise))
    assert tonal > 0.6 and noisy < 0.25
    assert np.median(high_band_periodicity(30 * harmonic.astype(np.float32), labels * 1.05, audio)) > 0.6
    assert buzz(noise, noise, labels, audio) == 0.0
    assert buzz(noise, harmonic, labels, audio) > 0.4 > -0.4 > buzz(harmonic, noise, labels, audio)
    assert math.isnan(buzz(noise, harmonic, np.zeros_like(labels), audio))  # no voiced frame
    assert high_band_periodicity(noise, labels, load_preset("tiny").audio).size == 0  # Nyquist 4 kHz: no band
