import dataclasses

import pytest

from wavegen.config import AudioConfig, ConfigError, Preset, dump_preset, load_preset, preset_names


def test_shipped_presets_load_and_round_trip():
    assert {"tiny", "speech16k", "ljspeech22k"} <= set(preset_names())
    for name in preset_names():
        preset = load_preset(name)
        assert Preset.from_dict(preset.to_dict()) == preset
        assert dump_preset(preset)


def test_default_presets_follow_their_conventions():
    speech = load_preset("speech16k").audio
    lj = load_preset("ljspeech22k").audio
    assert (speech.sample_rate, speech.n_fft, speech.win_length, speech.hop_length, speech.n_mels,
            speech.f_min, speech.f_max) == (16000, 1024, 1024, 256, 80, 0.0, 8000.0)
    assert (lj.sample_rate, lj.n_fft, lj.win_length, lj.hop_length, lj.n_mels,
            lj.f_min, lj.f_max) == (22050, 1024, 1024, 256, 80, 0.0, 8000.0)
    assert lj == AudioConfig()  # the dataclass default is the Tacotron2 / HiFi-GAN convention


def test_upsampler_strides_must_multiply_to_hop_length():
    preset = load_preset("tiny")
    bad_teacher = dataclasses.replace(preset.teacher, upsample_scales=(4, 8))
    with pytest.raises(ConfigError, match="multiply to 32, not hop_length 64"):
        dataclasses.replace(preset, teacher=bad_teacher)


def test_invariants_are_checked_on_creation():
    with pytest.raises(ConfigError, match="f_max"):
        AudioConfig(sample_rate=16000, f_max=9000.0)
    with pytest.raises(ConfigError, match="win_length"):
        AudioConfig(n_fft=512, win_length=1024)
    with pytest.raises(ConfigError, match="unknown key"):
        Preset.from_dict({"audio": {"sample_rate": 16000, "hop": 256}})


def test_unknown_preset_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="speech16k"):
        load_preset("no-such-preset")


def test_yaml_file_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(dump_preset(load_preset("tiny")))
    assert load_preset(path).audio == load_preset("tiny").audio
