"""The web demo: the handler called directly, the HTTP API through gradio_client, and a real browser.

A tiny untrained vocoder is enough: these tests check plumbing, lengths and error messages, not sound.
Everything runs offline on the CPU; the browser test needs Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import wavegen.vocoder  # noqa: E402
from app import Limits, build_demo, compare, launch, launch_options, load_vocoder, vocode  # noqa: E402
from app.images import CONTOUR_COLOUR  # noqa: E402
from wavegen.checkpoint import CheckpointError  # noqa: E402
from wavegen.models import Student, Teacher  # noqa: E402
from wavegen.models.pitch import PitchPredictor  # noqa: E402
from wavegen.vocoder import Vocoder  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# gradio's queue calls pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def vocoder(tiny) -> Vocoder:
    torch.manual_seed(0)
    return Vocoder(tiny.audio, Teacher(tiny.teacher, tiny.audio), Student(tiny.student, tiny.audio), device="cpu",
                   pitch=PitchPredictor(tiny.pitch))


def write_tone(path: Path, seconds: float, sample_rate: int) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return path


def expected_samples(path: Path, tiny) -> int:
    """A file of T samples at the model's rate gives T // hop frames, and frames * hop samples back."""
    return sf.info(str(path)).frames // tiny.audio.hop_length * tiny.audio.hop_length


def refusal_message(excinfo: pytest.ExceptionInfo) -> str:
    message = excinfo.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


# --- the handler, called directly ---------------------------------------------------------------

def test_vocode_returns_int16_audio_of_frames_times_hop(tmp_path, vocoder, tiny):
    wav = write_tone(tmp_path / "tone.wav", 0.5, tiny.audio.sample_rate)
    result = vocode(str(wav), "student", vocoder=vocoder)
    rate, audio = result.audio
    assert rate == tiny.audio.sample_rate and audio.dtype == np.int16
    assert audio.shape == (expected_samples(wav, tiny),)
    assert result.input_mel.dtype == np.uint8 and result.input_mel.shape == result.output_mel.shape
    assert result.input_mel.shape[-1] == 3 and not np.array_equal(result.input_mel, result.output_mel)
    assert "0.50 s of audio" in result.summary and "real-time factor" in result.summary


def contour_pixels(image: np.ndarray) -> np.ndarray:
    """Rows of the image where the F0 contour is drawn (its colour, exactly)."""
    return np.nonzero((image == np.array(CONTOUR_COLOUR, dtype=np.uint8)).all(axis=-1).any(axis=1))[0]


def test_pitch_shift_moves_the_contour_up_and_is_reported(tmp_path, vocoder, tiny):
    """The contours are drawn over both mels on the same axes; a shift of 1.5 draws the input's contour (as
    vocoded) higher than the unshifted one, and the summary gives the medians."""
    wav = write_tone(tmp_path / "tone.wav", 0.75, tiny.audio.sample_rate)
    plain = vocode(str(wav), "student", vocoder=vocoder)
    shifted = vocode(str(wav), "student", pitch_shift=1.5, vocoder=vocoder)
    assert contour_pixels(plain.input_mel).size and contour_pixels(plain.output_mel).size
    assert contour_pixels(shifted.input_mel).mean() < contour_pixels(plain.input_mel).mean()  # higher = smaller row
    assert "(the input's ×1.5)" in shifted.summary and "F0 (cyan)" in shifted.summary
    assert shifted.audio[1].shape == plain.audio[1].shape and not np.array_equal(shifted.audio[1], plain.audio[1])


@pytest.mark.parametrize("model, shift, expected", [
    ("student", 3.0, "pitch shift must be a number in [0.5, 2], got 3.0"),
    ("griffin-lim", 1.25, "the griffin-lim reads F0 from the mel alone"),
])
def test_bad_pitch_shifts_are_refused(tmp_path, vocoder, model, shift, expected):
    wav = write_tone(tmp_path / "tone.wav", 0.2, vocoder.audio.sample_rate)
    with pytest.raises(gr.Error) as excinfo:
        vocode(str(wav), model, pitch_shift=shift, vocoder=vocoder)
    assert refusal_message(excinfo).startswith(expected)


def test_compare_runs_every_model_on_the_same_input(tmp_path, vocoder, tiny):
    wav = write_tone(tmp_path / "tone.wav", 0.5, tiny.audio.sample_rate)
    student, teacher, griffin_lim, table = compare(str(wav), vocoder=vocoder, limits=Limits(2.0, 1.0))
    for audio in (student, teacher, griffin_lim):
        assert audio[0] == tiny.audio.sample_rate and audio[1].shape == (expected_samples(wav, tiny),)
    assert table.count("| student") == table.count("| teacher") == table.count("| Griffin-Lim") == 1
    assert "mel distance" in table and "skipped" not in table
    _, teacher, _, table = compare(str(wav), pitch_shift=1.25, vocoder=vocoder, limits=Limits(2.0, 0.25))
    assert teacher is None and "skipped: input longer than its 0.25 s cap" in table and "(pitch ×1.25)" in table


def test_mel_file_is_vocoded_to_frames_times_hop(tmp_path, vocoder, tiny):
    wav = write_tone(tmp_path / "tone.wav", 0.3, tiny.audio.sample_rate)
    mel = vocoder.mel(sf.read(wav, dtype="float32")[0])[0].numpy()  # (n_mels, F)
    np.save(tmp_path / "mel.npy", mel)
    with pytest.warns(UserWarning, match="vocoding the mel file"):  # gr.Warning, outside a server
        result = vocode(str(wav), "griffin-lim", mel_file=str(tmp_path / "mel.npy"), vocoder=vocoder)
    audio = result.audio[1]
    assert audio.shape == (mel.shape[1] * tiny.audio.hop_length,)


@pytest.mark.filterwarnings("ignore::wavegen.audio.MelConventionWarning")  # the library's, for the log
def test_mel_convention_mismatch_is_shown_as_a_warning(tmp_path, vocoder):
    np.save(tmp_path / "log10.npy", np.full((vocoder.audio.n_mels, 8), -2.0, dtype=np.float32))
    with pytest.warns(UserWarning) as record:  # gr.Warning, outside a server
        vocode(None, "griffin-lim", mel_file=str(tmp_path / "log10.npy"), vocoder=vocoder)
    shown = [str(w.message) for w in record if w.category is UserWarning]
    assert any(m.startswith("log10.npy: ") and "looks like a log10 mel" in m for m in shown)


def test_speed_up_over_the_teacher_is_reported_for_the_same_input(tmp_path, vocoder, tiny):
    wav = write_tone(tmp_path / "short.wav", 0.1, tiny.audio.sample_rate)
    timings, calls = {}, []
    first = vocode(str(wav), "student", vocoder=vocoder, timings=timings)
    assert "Speed-up over the teacher" not in first.summary
    teacher = vocode(str(wav), "teacher", vocoder=vocoder, timings=timings,
                     progress=lambda done, total: calls.append((done, total)))
    assert teacher.audio[1].shape == (expected_samples(wav, tiny),)
    assert calls and calls[-1] == (expected_samples(wav, tiny),) * 2
    assert "Speed-up over the teacher on this input: student" in teacher.summary


def test_corrupt_file_is_refused_with_a_one_line_message(tmp_path, vocoder):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    with pytest.raises(gr.Error) as excinfo:
        vocode(str(corrupt), "student", vocoder=vocoder)
    message = refusal_message(excinfo)
    assert message.startswith("corrupt.wav: cannot decode audio") and str(tmp_path) not in message


def test_too_long_upload_is_refused_and_the_teacher_cap_is_shorter(tmp_path, vocoder, tiny):
    wav = write_tone(tmp_path / "long.wav", 1.5, tiny.audio.sample_rate)
    limits = Limits(max_seconds=1.0, teacher_max_seconds=0.25)
    with pytest.raises(gr.Error) as excinfo:
        vocode(str(wav), "student", vocoder=vocoder, limits=limits)
    assert "the input is 1.50 s long; the student takes at most 1 s" in refusal_message(excinfo)
    short = write_tone(tmp_path / "short.wav", 0.5, tiny.audio.sample_rate)
    with pytest.raises(gr.Error) as excinfo:
        vocode(str(short), "teacher", vocoder=vocoder, limits=limits)
    assert "the teacher takes at most 0.25 s" in refusal_message(excinfo)


def test_mel_with_the_wrong_band_count_is_refused(tmp_path, vocoder, tiny):
    np.save(tmp_path / "mel80.npy", np.full((tiny.audio.n_mels + 60, 12), -4.0, dtype=np.float32))
    with pytest.raises(gr.Error) as excinfo:
        vocode(None, "student", mel_file=str(tmp_path / "mel80.npy"), vocoder=vocoder)
    assert refusal_message(excinfo) == (f"mel80.npy: has {tiny.audio.n_mels + 60} mel bands, "
                                        f"the model expects {tiny.audio.n_mels}")


@pytest.mark.parametrize("write, expected", [
    (lambda path, n_mels: path.write_bytes(b"just text"), "bad.npy: not a .npy file"),
    (lambda path, n_mels: np.save(path, np.zeros((n_mels, 5), dtype=np.int64)),
     "bad.npy: holds int64 values"),
    (lambda path, n_mels: np.save(path, np.full((2, n_mels, 5), -6.0, dtype=np.float32)),
     "bad.npy: holds a batch of 2 mels"),
    (lambda path, n_mels: np.save(path, np.full((n_mels, 5), np.nan, dtype=np.float32)),
     "bad.npy: contains NaN"),
], ids=["not-npy", "integers", "batch", "nan"])
def test_bad_mel_files_are_refused(tmp_path, vocoder, write, expected):
    path = tmp_path / "bad.npy"
    write(path, vocoder.audio.n_mels)
    with pytest.raises(gr.Error) as excinfo:
        vocode(None, "student", mel_file=str(path), vocoder=vocoder)
    assert refusal_message(excinfo).startswith(expected)


@pytest.mark.parametrize("with_audio, model, temperature, expected", [
    (False, "student", 1.0, "no input"),
    (True, "wavenet", 1.0, "unknown model 'wavenet'"),
    (True, "student", float("nan"), "temperature must be a number in [0, 1.5]"),
])
def test_bad_requests_are_refused(tmp_path, vocoder, with_audio, model, temperature, expected):
    audio = write_tone(tmp_path / "tone.wav", 0.2, vocoder.audio.sample_rate) if with_audio else None
    with pytest.raises(gr.Error) as excinfo:
        vocode(audio, model, temperature, vocoder=vocoder)
    assert refusal_message(excinfo).startswith(expected)


def test_missing_model_is_refused_by_name(tmp_path, tiny):
    griffin_lim_only = Vocoder.from_preset(tiny, device="cpu")
    wav = write_tone(tmp_path / "tone.wav", 0.2, tiny.audio.sample_rate)
    with pytest.raises(gr.Error) as excinfo:
        vocode(str(wav), "student", vocoder=griffin_lim_only)
    assert refusal_message(excinfo) == "this checkpoint has no trained student; available: griffin-lim"


def test_missing_default_checkpoint_falls_back_to_griffin_lim(tmp_path, monkeypatch):
    monkeypatch.setattr(wavegen.vocoder, "CHECKPOINTS_DIR", tmp_path)
    vocoder, notice = load_vocoder("default", device="cpu")
    assert vocoder.available_models == ["griffin-lim"] and "Griffin-Lim" in notice
    with pytest.raises(CheckpointError):
        load_vocoder("no-such-checkpoint", device="cpu")
    demo = build_demo(vocoder, notice=notice, examples=[])
    shown = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any(notice in (text or "") for text in shown)


# --- the app served in-process, through gradio_client -----------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(vocoder):
    """The demo on a free local port (the launch options `launch` uses), closed after the module."""
    demo = build_demo(vocoder, max_seconds=2.0, teacher_max_seconds=0.25)
    port = free_port()
    demo.launch(**{**launch_options("127.0.0.1", port), "prevent_thread_lock": True, "quiet": True})
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(served, tmp_path):
    from gradio_client import Client

    return Client(served, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "downloads"))


def test_api_vocode_returns_the_audio_first(client, tmp_path, tiny):
    from gradio_client import handle_file

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/vocode"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names == ["audio_file", "model", "temperature", "mel_file", "pitch_shift"]
    wav = write_tone(tmp_path / "tone.wav", 0.5, tiny.audio.sample_rate)
    result = client.predict(handle_file(str(wav)), "student", api_name="/vocode")  # as callers before pitch_shift
    assert len(result) == 4  # audio, input mel image, output mel image, summary (the session state is hidden)
    audio, rate = sf.read(result[0], dtype="int16")
    assert rate == tiny.audio.sample_rate and audio.shape == (expected_samples(wav, tiny),)
    assert "real-time factor" in result[3]


def test_api_vocode_takes_a_pitch_shift_and_compare_returns_three_outputs(client, tmp_path, tiny):
    from gradio_client import handle_file

    wav = write_tone(tmp_path / "tone.wav", 0.5, tiny.audio.sample_rate)
    result = client.predict(handle_file(str(wav)), "student", 1.0, None, 1.25, api_name="/vocode")
    assert "×1.25" in result[3]
    *audios, table = client.predict(handle_file(str(wav)), api_name="/compare")
    assert audios[1] is None and "skipped" in table  # the served teacher cap is 0.25 s
    for path in (audios[0], audios[2]):
        audio, rate = sf.read(path, dtype="int16")
        assert rate == tiny.audio.sample_rate and audio.shape == (expected_samples(wav, tiny),)


def test_api_reports_errors_as_messages(client, tmp_path, tiny):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio")
    with pytest.raises(AppError, match=r"corrupt\.wav: cannot decode audio"):
        client.predict(handle_file(str(corrupt)), "student", api_name="/vocode")
    wav = write_tone(tmp_path / "tone.wav", 0.5, tiny.audio.sample_rate)
    with pytest.raises(AppError, match=r"the teacher takes at most 0\.25 s"):
        client.predict(handle_file(str(wav)), "teacher", 1.0, api_name="/vocode")


def test_launch_serves_the_griffin_lim_fallback_with_its_limits(tmp_path, monkeypatch):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(wavegen.vocoder, "CHECKPOINTS_DIR", tmp_path / "none")  # no "default" shipped
    demo = launch(port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, analytics_enabled=False, verbose=False,
                        download_files=str(tmp_path / "downloads"))
        wav = write_tone(tmp_path / "tone.wav", 0.5, 16000)  # the fallback's speech16k rate
        audio, rate = sf.read(client.predict(handle_file(str(wav)), "griffin-lim", api_name="/vocode")[0])
        assert rate == 16000 and audio.shape == (8000 // 256 * 256,)
        with pytest.raises(AppError, match="this checkpoint has no trained student; available: griffin-lim"):
            client.predict(handle_file(str(wav)), "student", api_name="/vocode")
        (tmp_path / "big.wav").write_bytes(bytes(21 * 1024 * 1024))
        with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):
            client.predict(handle_file(str(tmp_path / "big.wav")), "griffin-lim", api_name="/vocode")
    finally:
        demo.close()


# --- a real browser ------------------------------------------------------------------------------

def test_browser_upload_vocode_and_download(served, tmp_path, tiny):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    wav = write_tone(tmp_path / "tone.wav", 0.75, tiny.audio.sample_rate)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served, wait_until="domcontentloaded")
            page.locator("#audio-in input[type=file]").set_input_files(str(wav))
            uploaded = page.locator("#audio-in audio[data-testid^=audio-player]")  # appears once uploaded
            expect(uploaded).to_be_attached()
            page.locator("#model input[value=student]").check()
            shift = page.locator("#pitch-shift input[type=number]")
            shift.fill("1.25")
            shift.press("Enter")
            page.locator("#vocode-btn").click()
            link = page.locator("#audio-out a[download]")
            expect(link).to_be_attached(timeout=30_000)
            expect(page.locator("#summary")).to_contain_text("real-time factor", timeout=30_000)
            expect(page.locator("#summary")).to_contain_text("×1.25")
            expect(page.locator("#mel-out-img img")).to_be_visible()
            response = page.request.get(link.get_attribute("href"))
            assert response.ok
            (tmp_path / "out.wav").write_bytes(response.body())
            page.locator("#compare-btn").click()
            expect(page.locator("#compare-table")).to_contain_text("mel distance", timeout=30_000)
            expect(page.locator("#compare-student a[download]")).to_be_attached()
            expect(page.locator("#compare-griffin-lim a[download]")).to_be_attached()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        finally:
            browser.close()
    audio, rate = sf.read(tmp_path / "out.wav", dtype="int16")
    assert rate == tiny.audio.sample_rate and audio.shape == (expected_samples(wav, tiny),)


def test_the_page_says_what_the_checkpoint_holds_and_how_its_student_was_trained(tiny_checkpoint, tmp_path):
    """The description follows the checkpoint: a student trained with the KL is called distilled, the same
    weights saved with a spectral-only recipe (distill.kl_weight 0, as in their file's preset) are not."""
    import dataclasses
    import shutil

    from app.ui import about
    from wavegen.checkpoint import export_model, import_model

    distilled = Vocoder.load(tiny_checkpoint, device="cpu")
    assert distilled.distilled  # the tiny preset distils with kl_weight 1
    text = about(distilled)
    assert "distilled from the teacher" in text and "the student learned from" in text
    assert "one pitch period back" in text  # the tiny teacher reads the pitch lag
    assert "harmonic-plus-noise flow, then 2 WaveNet flows" in text  # the tiny student's flows
    student, preset = import_model(tiny_checkpoint / "student.safetensors", "student")
    spectral = dataclasses.replace(preset, distill=dataclasses.replace(preset.distill, kl_weight=0.0))
    folder = tmp_path / "spectral"
    folder.mkdir()
    for kind in ("teacher", "pitch"):
        shutil.copy(tiny_checkpoint / f"{kind}.safetensors", folder / f"{kind}.safetensors")
    export_model(folder / "student.safetensors", student, "student", spectral)
    plain = Vocoder.load(folder, device="cpu")
    assert plain.distilled is False
    text = about(plain)
    assert "not distilled from the teacher" in text and "learned from" not in text
    in_memory = Vocoder(distilled.audio, student=student, pitch=distilled.pitch_model, device="cpu")
    assert in_memory.distilled is None and "distilled" not in about(in_memory)  # unknown: nothing claimed
