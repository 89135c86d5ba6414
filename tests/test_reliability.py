"""Bad input everywhere, and interrupted work: every case gets a correct result or one clear line."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import write_tone_corpus

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def write_bad_inputs(folder, sample_rate, n_mels, canary):
    """Files that must fail (name -> expected words in the error) and unusual files that must work."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.4 * 96000)) / 96000
    sf.write(folder / "hires_stereo.wav", np.stack([0.3 * np.sin(2e3 * t), 0.2 * np.sin(3e3 * t)], 1), 96000,
             subtype="PCM_24")
    sf.write(folder / "silence.wav", np.zeros(sample_rate // 2, np.float32), sample_rate)
    sf.write(folder / "too_loud.wav", 30 * np.sin(np.arange(sample_rate // 2) * 0.1).astype(np.float32),
             sample_rate, subtype="FLOAT")
    must_fail = {}
    (folder / "empty.wav").write_bytes(b"")
    must_fail["empty.wav"] = "empty (0 bytes)"
    sf.write(folder / "no_frames.wav", np.zeros(0, np.float32), sample_rate)
    must_fail["no_frames.wav"] = "no audio samples"
    sf.write(folder / "one_sample.wav", np.full(1, 0.1, np.float32), sample_rate)
    must_fail["one_sample.wav"] = "shorter than one hop"
    whole = (folder / "hires_stereo.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(whole[:40])
    must_fail["truncated.wav"] = "cannot"
    (folder / "random.ogg").write_bytes(np.random.default_rng(0).bytes(3000))
    must_fail["random.ogg"] = "cannot decode"
    (folder / "notes.flac").write_text("this is a text file\n")
    must_fail["notes.flac"] = "cannot decode"
    nan = np.zeros(2000, np.float32)
    nan[100] = np.inf
    sf.write(folder / "inf.wav", nan, sample_rate, subtype="FLOAT")
    must_fail["inf.wav"] = "NaN or infinite"
    np.save(folder / "wrong_bands.npy", np.full((n_mels - 1, 8), -6.0, np.float32))
    must_fail["wrong_bands.npy"] = f"the model expects {n_mels}"
    np.save(folder / "one_d.npy", np.full(8, -6.0, np.float32))
    must_fail["one_d.npy"] = "expected a mel of shape"
    np.save(folder / "nan_mel.npy", np.full((n_mels, 8), np.nan, np.float32))
    must_fail["nan_mel.npy"] = "NaN"
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    must_fail["corrupt.npy"] = "not a readable mel file"
    np.save(folder / "pickled.npy", np.array([_Payload(canary)], dtype=object), allow_pickle=True)
    must_fail["pickled.npy"] = "not a readable mel file"
    return must_fail


def test_vocode_handles_every_bad_input(tmp_path, tiny_checkpoint, tiny):
    canary = tmp_path / "code-ran"
    must_fail = write_bad_inputs(tmp_path / "in", tiny.audio.sample_rate, tiny.audio.n_mels, canary)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "wavegen", "vocode", tmp_path / "in", "-o", out,
                             "--checkpoint", tiny_checkpoint], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(must_fail), result.stderr
    for name, words in must_fail.items():
        assert any(name in line and words in line for line in errors), (name, words, errors)
    assert sorted(p.name for p in out.iterdir()) == ["hires_stereo.wav", "silence.wav", "too_loud.wav"]
    for path in out.iterdir():
        wav, rate = sf.read(path)
        assert rate == tiny.audio.sample_rate and np.isfinite(wav).all() and wav.size > 0
    hires, _ = sf.read(out / "hires_stereo.wav")
    assert hires.size == int(0.4 * tiny.audio.sample_rate) // tiny.audio.hop_length * tiny.audio.hop_length
    assert not canary.exists()


def test_preprocess_reports_every_bad_file_and_keeps_the_good_ones(tmp_path, tiny):
    from wavegen.data import preprocess

    canary = tmp_path / "code-ran"
    must_fail = write_bad_inputs(tmp_path / "in", tiny.audio.sample_rate, tiny.audio.n_mels, canary)
    write_tone_corpus(tmp_path / "in" / "good", 3, tiny.audio.sample_rate)
    manifest = preprocess(tmp_path / "in", tmp_path / "out", tiny.audio, workers=1, progress=False)
    kept = sorted(u["key"] for u in manifest["utterances"])
    assert kept == ["good/tone_000.wav", "good/tone_001.wav", "good/tone_002.wav", "hires_stereo.wav",
                    "too_loud.wav"]
    failed = {f["key"] for f in manifest["failed"]}
    audio_failures = {n for n in must_fail if not n.endswith(".npy")}
    assert failed == audio_failures | {"silence.wav"}
    assert not canary.exists()


@pytest.mark.slow
def test_vocode_killed_mid_run_leaves_only_complete_files(tmp_path, tiny_checkpoint, tiny):
    sources = write_tone_corpus(tmp_path / "in", 12, tiny.audio.sample_rate)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "wavegen", "vocode", tmp_path / "in", "-o", out, "--model",
                             "teacher", "--batch-size", "1", "--checkpoint", tiny_checkpoint],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out.is_dir() and any(p.suffix == ".wav" for p in out.iterdir())):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 0 < len(finished) < len(sources), "the run should have been killed part-way"
    lengths = {p.stem: sf.info(p).frames for p in sources}
    for path in finished:
        wav, rate = sf.read(path)
        expected = lengths[path.stem] // tiny.audio.hop_length * tiny.audio.hop_length
        assert rate == tiny.audio.sample_rate and wav.size == expected  # complete, never truncated
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert all(p.suffix == ".tmp" for p in leftovers)  # at most a hidden temporary file, never a .wav
