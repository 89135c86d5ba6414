"""The command line, end to end, as a user runs it (`python -m wavegen ...`)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavegen.vocoder as wavegen_vocoder  # resolve_precision looked up when called: --auto-precision patches it
from tests.conftest import write_tone_corpus

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def wavegen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wavegen", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def test_mel_command_writes_the_mel_of_the_file_as_is(tmp_path, tiny):
    from wavegen.audio import load_audio, log_mel

    (source,) = write_tone_corpus(tmp_path / "in", 1, tiny.audio.sample_rate)
    result = wavegen("mel", source, "-o", tmp_path / "x.npy", "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    mel = np.load(tmp_path / "x.npy")
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, log_mel(load_audio(source, tiny.audio.sample_rate), tiny.audio).numpy(),
                               atol=1e-6)
    again = wavegen("mel", source, "-o", tmp_path / "x.npy", "--preset", "tiny")
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_preprocess_command_reports_the_corrupt_file(tmp_path):
    write_tone_corpus(tmp_path / "corpus", 5, 8000)
    (tmp_path / "corpus" / "broken.flac").write_bytes(b"fLaC" + os.urandom(500))
    result = wavegen("preprocess", tmp_path / "corpus", tmp_path / "out", "--preset", "tiny", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "broken.flac" in result.stdout + result.stderr and "skipped 1" in result.stdout
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["utterances"]) == 5

    labels = {p.name: np.load(p) for p in (tmp_path / "out" / "f0").iterdir()}
    relabel = wavegen("preprocess", "--labels-only", tmp_path / "out", "--labeller", "vote", "--workers", "1")
    assert relabel.returncode == 0, relabel.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["pitch_labeller"] == "vote" and "(vote)" in relabel.stdout
    for name, old in labels.items():  # the tones are clean: the majority agrees with DIO where both voiced
        new = np.load(tmp_path / "out" / "f0" / name)
        both = (new > 0) & (old > 0)
        assert new.shape == old.shape and both.mean() > 0.7
        assert np.median(np.abs(1200 * np.log2(new[both] / old[both]))) < 5


def test_vocode_a_folder_mixing_good_and_broken_files(tmp_path, tiny_checkpoint, tiny):
    inputs = tmp_path / "inputs"
    good = write_tone_corpus(inputs / "audio", 2, tiny.audio.sample_rate)
    sf.write(inputs / "stereo48k.wav", np.random.default_rng(0).uniform(-0.3, 0.3, (9600, 2)), 48000)
    np.save(inputs / "good_mel.npy", np.full((tiny.audio.n_mels, 6), -6.0, np.float32))
    np.save(inputs / "wrong_bands.npy", np.full((tiny.audio.n_mels + 3, 6), -6.0, np.float32))
    np.save(inputs / "nan_mel.npy", np.full((tiny.audio.n_mels, 6), np.nan, np.float32))
    (inputs / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (inputs / "empty.wav").write_bytes(b"")
    (inputs / "random.mp3").write_bytes(os.urandom(2000))
    out = tmp_path / "out"
    result = wavegen("vocode", inputs, "-o", out, "--checkpoint", tiny_checkpoint, "--batch-size", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 5, result.stderr
    for name in ("wrong_bands.npy", "nan_mel.npy", "corrupt.npy", "empty.wav", "random.mp3"):
        assert any(name in line for line in errors), name
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([p.stem + ".wav" for p in good] + ["stereo48k.wav", "good_mel.wav"])
    wav, rate = sf.read(out / "good_mel.wav")
    assert rate == tiny.audio.sample_rate and wav.size == 6 * tiny.audio.hop_length
    first, _ = sf.read(out / f"{good[0].stem}.wav")
    source, _ = sf.read(good[0])
    assert first.size == source.size // tiny.audio.hop_length * tiny.audio.hop_length

    again = wavegen("vocode", good[0], "-o", out, "--checkpoint", tiny_checkpoint)
    assert again.returncode == 1 and "pass --force" in again.stderr
    forced = wavegen("vocode", good[0], "-o", out, "--checkpoint", tiny_checkpoint, "--force", "--model", "griffin-lim")
    assert forced.returncode == 0, forced.stderr
    missing = wavegen("vocode", tmp_path / "nothing-here", "-o", out, "--checkpoint", tiny_checkpoint)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_vocode_with_a_missing_checkpoint_is_one_line(tmp_path):
    result = wavegen("vocode", tmp_path, "-o", tmp_path / "o", "--checkpoint", tmp_path / "none")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no checkpoint folder" in result.stderr


def test_pitch_command_writes_a_contour_per_input_and_a_bad_shift_writes_nothing(tmp_path, tiny_checkpoint, tiny):
    (source,) = write_tone_corpus(tmp_path / "in", 1, tiny.audio.sample_rate, seed=3)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    result = wavegen("pitch", source, tmp_path / "broken.wav", "-o", tmp_path / "f0", "--checkpoint", tiny_checkpoint)
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "broken.wav" in result.stderr
    lines = (tmp_path / "f0" / f"{source.stem}.csv").read_text().splitlines()
    frames = sf.info(source).frames // tiny.audio.hop_length
    assert lines[0] == "time_s,f0_hz,voicing_probability" and len(lines) == frames + 1
    time_s, hz, probability = map(float, lines[2].split(","))
    assert time_s == pytest.approx(tiny.audio.hop_length / tiny.audio.sample_rate, abs=1e-4)
    assert hz >= 0 and 0 <= probability <= 1
    assert not (tmp_path / "f0" / "broken.csv").exists()
    shifted = wavegen("vocode", source, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--pitch-shift", "3")
    assert shifted.returncode == 1 and "pitch shift must be within" in shifted.stderr
    assert shifted.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_vocode_with_an_f0_file_round_trips_the_pitch_command(tmp_path, tiny_checkpoint, tiny):
    """`wavegen pitch` -> CSV -> `vocode --f0` (a file for all, a folder per input, a .npy) gives what the API
    gives with that F0; a contour of the wrong length or a broken file is one line and writes nothing."""
    from wavegen import Vocoder
    from wavegen.audio import load_audio
    from wavegen.contour import read_contour

    (source,) = write_tone_corpus(tmp_path / "in", 1, tiny.audio.sample_rate, seed=5)
    assert wavegen("pitch", source, "-o", tmp_path / "f0", "--checkpoint", tiny_checkpoint).returncode == 0
    csv_file = tmp_path / "f0" / f"{source.stem}.csv"
    contour = read_contour(csv_file)
    contour[contour > 0] = 180.0  # an edited melody: flat 180 Hz where voiced
    np.save(tmp_path / "flat.npy", contour)
    # the API's student and the command's on the same device and arithmetic: precision="auto" is bf16 on CPUs with
    # native bf16 (and under --auto-precision bf16, which reaches this process only), fp32 elsewhere
    vocoder = Vocoder.load(tiny_checkpoint, device="cpu")
    runs = {"csv": ("--f0", csv_file), "folder": ("--f0", tmp_path / "f0"), "npy": ("--f0", tmp_path / "flat.npy")}
    for name, args in runs.items():
        result = wavegen("vocode", source, "-o", tmp_path / name, "--checkpoint", tiny_checkpoint, "--seed", "0",
                         "--device", "cpu", "--precision", vocoder.precision, *args)
        assert result.returncode == 0, result.stderr
    mel = vocoder.mel(load_audio(source, tiny.audio.sample_rate))
    for name, f0 in (("csv", read_contour(csv_file)), ("npy", contour)):
        expected = vocoder.synthesize(mel, f0=f0, seed=0)[0].numpy()
        written, _ = sf.read(tmp_path / name / f"{source.stem}.wav", dtype="float32")
        assert np.abs(written - expected).max() < 2e-4  # 16-bit PCM
    folder, _ = sf.read(tmp_path / "folder" / f"{source.stem}.wav", dtype="float32")
    assert np.array_equal(folder, sf.read(tmp_path / "csv" / f"{source.stem}.wav", dtype="float32")[0])

    np.save(tmp_path / "short.npy", contour[:-3])
    (tmp_path / "bad.csv").write_text("time_s,f0_hz,voicing_probability\n0.0,abc,0.5\n")
    np.save(tmp_path / "negative.npy", -contour - 1)
    for bad, message in (("short.npy", f"holds {contour.size - 3} F0 values, the input has {contour.size} mel"),
                         ("bad.csv", "unreadable F0 file"), ("negative.npy", "finite and >= 0"),
                         ("missing.csv", "no such F0 file")):
        result = wavegen("vocode", source, "-o", tmp_path / "refused", "--checkpoint", tiny_checkpoint,
                         "--f0", tmp_path / bad)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert result.stderr.count("error:") == 1 and not (tmp_path / "refused").exists()
    shifted = wavegen("vocode", source, "-o", tmp_path / "t", "--checkpoint", tiny_checkpoint, "--model",
                      "griffin-lim", "--pitch-shift", "1.25")
    assert shifted.returncode == 1 and "the griffin-lim reads F0 from the mel alone" in shifted.stderr
    assert shifted.stderr.count("error:") == 1 and not (tmp_path / "t").exists()


def test_vocode_pitch_shift_measures_as_shifted(tmp_path):
    """`vocode --pitch-shift 1.25` with the shipped default on a steady voiced tone: the output's F0 over the
    unshifted output's, by the labeller, has a median within 2 % of 1.25."""
    from wavegen.audio import load_audio, pitch_labels
    from wavegen.config import load_preset

    audio = load_preset("speech16k").audio
    t = np.arange(audio.sample_rate) / audio.sample_rate
    tone = sum(0.5 / k * np.sin(2 * np.pi * k * 140.0 * t) for k in range(1, 9))
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "tone.wav", (0.5 * tone / np.abs(tone).max()).astype(np.float32), audio.sample_rate)
    # the CPU path auto takes here (bf16 with native bf16), or the one --auto-precision names: the subprocess
    # would not see that option
    precision = wavegen_vocoder.resolve_precision("auto", torch.device("cpu"))
    for name, shift in (("plain", "1.0"), ("up", "1.25")):
        result = wavegen("vocode", tmp_path / "in", "-o", tmp_path / name, "--seed", "0", "--pitch-shift", shift,
                         "--device", "cpu", "--precision", precision)
        assert result.returncode == 0, result.stderr
    plain, up = (pitch_labels(load_audio(tmp_path / n / "tone.wav", audio.sample_rate), audio) for n in ("plain", "up"))
    both = (plain > 0) & (up > 0)
    assert both.mean() > 0.8
    assert abs(float(np.median(up[both] / plain[both])) / 1.25 - 1) < 0.02


@pytest.mark.slow
def test_eval_reports_every_metric_beside_griffin_lim(tmp_path, tiny_checkpoint, tiny):
    write_tone_corpus(tmp_path / "ref", 2, tiny.audio.sample_rate, seed=5)
    result = wavegen("eval", tmp_path / "ref", "--checkpoint", tiny_checkpoint, "--json", "--save-audio",
                     tmp_path / "listen")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"student", "griffin-lim"} and report["files"] == 2
    saved = sorted(p.name for p in (tmp_path / "listen").iterdir())
    assert len(saved) == 4 and all("__ref__tone_" in n for n in saved), saved  # 2 files x 2 models
    for model in ("student", "griffin-lim"):
        median = report[model]["median"]
        assert set(median) == {"stft", "mel_l1", "mcd_db", "pesq_wb", "stoi", "f0_rmse_cents", "f0_median_cents", "vde",
                               "buzz"}
        assert math.isnan(median["buzz"])  # 8 kHz audio has no band above 4 kHz
        assert len(report[model]["files"]) == 2
        assert -1 <= median["stoi"] <= 1 and median["mel_l1"] >= 0


def test_eval_with_no_readable_reference_is_an_error(tmp_path, tiny_checkpoint):
    (tmp_path / "list.txt").write_text("missing/one.wav\nmissing/two.wav\n")  # relative to the list's folder
    result = wavegen("eval", tmp_path / "list.txt", "--checkpoint", tiny_checkpoint, "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("error:") == 3 and "no reference file could be read (2 failed)" in result.stderr


def test_bench_reports_every_path_in_one_run(tiny_checkpoint):
    # bf16 beside fp32 where the CPU has bf16 matrix instructions; elsewhere bf16 is emulated (minutes)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    result = wavegen("bench", "--checkpoint", tiny_checkpoint, "--json", "--seconds", "1",
                     "--teacher-seconds", "0.05", "--naive-seconds", "0.01", "--precision", "bf16" if native else "fp32")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["paths"]) == {"student", "student_log_prob", "teacher_forced_train", "teacher_cached",
                                    "teacher_cached_pytorch", "teacher_naive", "griffin-lim", "hifigan_v3_peer"} | (
                                        {"student_fp32"} if native else set())
    assert "RANDOM weights" in report["paths"]["hifigan_v3_peer"]["note"]  # a speed peer, said so
    assert report["speedup_student_vs_hifigan_v3_peer"] > 0
    for row in report["paths"].values():
        assert row["seconds"] > 0 and row["rtf"] > 0 and row["peak_rss_mb"] > 0
    assert report["gemm_gflops_fp32"] > 0 and report["student_gflops"] > 0
    assert report.get("gemm_gflops_bf16", 1.0) > 0 and ("gemm_gflops_bf16" in report) == native
    assert report["speedup_student_vs_teacher_cached"] > 1  # parallel beats sequential even when tiny
    assert report["speedup_teacher_cached_vs_teacher_cached_pytorch"] > 1  # the compiled loop wins


def test_export_command(tmp_path, tiny_checkpoint):
    result = wavegen("export", tmp_path / "s.pt", "--checkpoint", tiny_checkpoint)
    assert result.returncode == 0 and (tmp_path / "s.pt").exists(), result.stderr
    onnx = wavegen("export", tmp_path / "s.onnx", "--format", "onnx", "--checkpoint", tiny_checkpoint)
    assert onnx.returncode in (0, 1) and "Traceback" not in onnx.stderr


@pytest.mark.slow
def test_app_command_serves_the_checkpoint(tmp_path, tiny_checkpoint, tiny):
    """`wavegen app --checkpoint DIR` as a user starts it: the page answers and /vocode synthesises."""
    import time
    import urllib.request

    from gradio_client import Client, handle_file

    from tests.test_app import free_port

    port = free_port()
    (source,) = write_tone_corpus(tmp_path / "in", 1, tiny.audio.sample_rate)
    server = subprocess.Popen([sys.executable, "-m", "wavegen", "app", "--checkpoint", str(tiny_checkpoint),
                               "--port", str(port)], env={**ENV, "GRADIO_ANALYTICS_ENABLED": "False"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.5)
        client = Client(url, analytics_enabled=False, verbose=False)
        audio_path, *_ = client.predict(handle_file(str(source)), "student", api_name="/vocode")
        wav, rate = sf.read(audio_path)
        assert rate == tiny.audio.sample_rate
        assert wav.size == sf.info(source).frames // tiny.audio.hop_length * tiny.audio.hop_length
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert "warning" not in errors.lower(), errors  # e.g. gradio's unclosed event loops


def test_keep_flows_script_cuts_a_student_to_its_first_flows(tiny_checkpoint, tiny, tmp_path, monkeypatch):
    import sys

    import torch
    import yaml

    from scripts import keep_flows
    from wavegen.checkpoint import import_model
    from wavegen.config import dump_preset

    lean = yaml.safe_load(dump_preset(tiny))
    lean["student"]["layers"] = list(tiny.student.layers[:1])
    (tmp_path / "lean.yaml").write_text(yaml.safe_dump(lean))
    out = tmp_path / "lean.safetensors"
    source = tiny_checkpoint / "student.safetensors"
    monkeypatch.setattr(sys, "argv", ["keep_flows", str(source), str(out), "--preset", str(tmp_path / "lean.yaml")])
    keep_flows.main()
    cut, preset = import_model(out, "student")
    full, _ = import_model(source, "student")
    assert preset.student.n_flows == 1 and len(cut.flows) == 1
    for name, value in cut.state_dict().items():  # the upsampler and the first flow, unchanged
        assert torch.equal(value, full.state_dict()[name])
    lean["student"]["residual_channels"] = 4  # not a cut of the source: refused
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(lean))
    monkeypatch.setattr(sys, "argv", ["keep_flows", str(source), str(out), "--preset", str(tmp_path / "other.yaml")])
    with pytest.raises(ValueError, match="first 1 flows"):
        keep_flows.main()
