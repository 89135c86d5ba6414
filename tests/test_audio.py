import math
import os

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from wavegen.audio import (AudioError, MelConventionWarning, MelError, MelFrontend, check_mel, load_audio,
                           log_mel, save_audio)
from wavegen.config import load_preset


def speechlike(sample_rate: int, seconds: float = 1.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 * (1 + 0.3 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 12)) + 0.02 * rng.standard_normal(t.size)
    return (0.8 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.mark.parametrize("name", ["speech16k", "ljspeech22k", "tiny"])
def test_mel_matches_librosa_reference(name):
    audio = load_preset(name).audio
    wav = speechlike(audio.sample_rate)
    ours = log_mel(wav, audio).numpy()
    ref = librosa.feature.melspectrogram(
        y=wav, sr=audio.sample_rate, n_fft=audio.n_fft, hop_length=audio.hop_length, win_length=audio.win_length,
        window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=audio.n_mels, fmin=audio.f_min,
        fmax=audio.f_max, htk=False, norm="slaney")
    ref = np.log(np.maximum(ref, audio.log_floor))[:, : wav.size // audio.hop_length]
    assert ours.shape == ref.shape == (audio.n_mels, wav.size // audio.hop_length)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_mel_frames_pair_with_hop_samples(tiny):
    frontend = MelFrontend(tiny.audio)
    hop = tiny.audio.hop_length
    assert frontend(torch.zeros(2, 10 * hop)).shape == (2, tiny.audio.n_mels, 10)
    assert frontend(torch.zeros(1, 10 * hop + hop - 1)).shape[-1] == 10
    silence = frontend(torch.zeros(1, 4 * hop))
    assert torch.allclose(silence, torch.full_like(silence, math.log(tiny.audio.log_floor)))
    with pytest.raises(AudioError, match="shorter than one hop"):
        frontend(torch.zeros(1, hop - 1))


def test_load_downmixes_stereo_and_resamples(tmp_path):
    t = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo.flac", np.stack([left, left * 0.0], axis=1), 48000)
    wav = load_audio(tmp_path / "stereo.flac", 16000)
    assert wav.dtype == np.float32 and wav.shape == (16000,)
    assert abs(np.abs(wav[1000:-1000]).max() - 0.25) < 0.01  # the average of the two channels
    spectrum = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spectrum) - 440) <= 1  # one-second signal: bin = Hz


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_every_soundfile_format_reads(tmp_path, fmt):
    wav = speechlike(16000, 0.5)
    path = save_audio(tmp_path / f"x.{fmt}", wav, 16000)
    back = load_audio(path, 16000)
    assert abs(back.size - wav.size) < 2000 and np.isfinite(back).all()


def test_bad_files_raise_one_clear_error(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.wav").write_bytes(os.urandom(4000))
    (tmp_path / "text.flac").write_text("not audio at all\n")
    sf.write(tmp_path / "noframes.wav", np.zeros((0,), np.float32), 16000)
    good = sf.SoundFile(tmp_path / "good.wav", "w", 16000, 1, "PCM_16")
    good.write(np.zeros(16000, np.float32))
    good.close()
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:30])
    for name in ("empty.wav", "noise.wav", "text.flac", "noframes.wav", "truncated.wav", "missing.wav"):
        with pytest.raises(AudioError) as info:
            load_audio(tmp_path / name, 16000)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_non_finite_and_too_loud_samples(tmp_path):
    wav = np.zeros(1000, np.float32)
    wav[10] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav", 16000)
    loud = np.full(1000, 40.0, np.float32)
    sf.write(tmp_path / "loud.wav", loud, 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="exceeds 1.0"):
        out = load_audio(tmp_path / "loud.wav", 16000)
    assert np.abs(out).max() <= 1.0


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_audio(tmp_path / "out.wav", np.zeros(100), 8000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    with pytest.raises(AudioError, match="non-finite"):
        save_audio(tmp_path / "bad.wav", np.full(10, np.inf), 8000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_check_mel_rejects_wrong_shapes_and_values(tiny):
    audio = tiny.audio
    good = torch.linspace(-11.0, 1.0, audio.n_mels * 5).reshape(audio.n_mels, 5)
    assert check_mel(good, audio).shape == (1, audio.n_mels, 5)
    with pytest.raises(MelError, match=f"has {audio.n_mels + 1} mel bands, the model expects {audio.n_mels}"):
        check_mel(torch.zeros(audio.n_mels + 1, 5) - 4, audio)
    with pytest.raises(MelError, match="transposed"):
        check_mel(torch.zeros(7, audio.n_mels) - 4, audio)
    with pytest.raises(MelError, match="shape"):
        check_mel(torch.zeros(audio.n_mels), audio)
    nan = good.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(MelError, match="NaN"):
        check_mel(nan, audio)


def test_check_mel_names_the_likely_convention(tiny):
    audio = tiny.audio
    wav = speechlike(audio.sample_rate)
    natural = log_mel(wav, audio)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_mel(natural, audio)  # our own mel: no warning
    with pytest.warns(MelConventionWarning, match="log10"):
        check_mel(natural / math.log(10), audio)
    with pytest.warns(MelConventionWarning, match="dB"):
        check_mel(20 * natural / math.log(10), audio)
    with pytest.warns(MelConventionWarning, match="linear"):
        check_mel(torch.exp(natural), audio)
