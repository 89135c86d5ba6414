"""The synthesis handler behind the page and the `vocode` API endpoint, callable without a server.

Every problem with the user's input becomes a one-line `gr.Error` (shown as a message, never a
traceback), a doubtful mel also a `gr.Warning`; files are named by their own name, not the server's
temporary path.
"""

from __future__ import annotations

import hashlib
import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np
from torch import Tensor

from wavegen import Vocoder
from wavegen.audio import AudioError, MelError, check_mel, load_audio, mel_convention_mismatch
from wavegen.config import AudioConfig
from wavegen.vocoder import MODELS, PITCH_SHIFT_RANGE, PitchError

from app.images import colour_scale, draw_contour, mel_image

MODEL_LABELS = {"student": "student (IAF, parallel)", "teacher": "teacher (WaveNet, sequential)",
                "griffin-lim": "Griffin-Lim (no network)"}
TEMPERATURE_RANGE = (0.0, 1.5)
NPY_MAGIC = b"\x93NUMPY"
KEPT_INPUTS = 32  # inputs per session whose timings are remembered for the speed-up


@dataclass(frozen=True)
class Limits:
    """The longest input, in seconds, each model accepts: the sequential teacher far less."""

    max_seconds: float = 30.0
    teacher_max_seconds: float = 10.0  # the compiled loop: ~40k samples/s here, so <= ~4 s of waiting

    def seconds_for(self, model: str) -> float:
        return self.teacher_max_seconds if model == "teacher" else self.max_seconds


class VocodeResult(NamedTuple):
    """What the page shows, in the order of the endpoint's outputs (the audio first)."""

    audio: tuple[int, np.ndarray]  # (sample_rate, (frames * hop,) int16)
    input_mel: np.ndarray  # (H, W, 3) uint8 image of the mel that was vocoded, its F0 contour drawn over it
    output_mel: np.ndarray  # (H, W, 3) uint8 image of the output's mel and contour, same scale and axes
    summary: str  # markdown: length, wall time, real-time factor, speed-up over the teacher, F0


class Synthesis(NamedTuple):
    """One model's output on a mel, timed."""

    wav: Tensor  # (F * hop,) float in [-1, 1]
    seconds: float  # wall time
    mel: np.ndarray  # (n_mels, F): the output's log-mel


def vocode(audio_file: str | Path | None, model: str, temperature: float = 1.0,
           mel_file: str | Path | None = None, pitch_shift: float = 1.0, *, vocoder: Vocoder,
           limits: Limits = Limits(), timings: dict[str, dict[str, float]] | None = None,
           progress: Callable[[int, int], None] | None = None) -> VocodeResult:
    """Vocode an audio file (through its mel) or a log-mel .npy file with one model.

    `mel_file` wins when both are given; `pitch_shift` multiplies the F0 of a pitch-driven model (the others
    take F0 from the mel alone, so they refuse a shift). `timings` is the session's memory, {input fingerprint:
    {model: real-time factor}}, updated in place; `progress(done, total)` is fed by the teacher.
    Raises gr.Error with a one-line message for any unusable request.
    """
    check_request(vocoder, model, temperature, pitch_shift)
    mel = read_input(vocoder, audio_file, mel_file)  # (1, n_mels, F)
    seconds = mel.shape[-1] * vocoder.audio.hop_length / vocoder.audio.sample_rate
    check_duration(seconds, model, limits)
    out = synthesize(vocoder, mel, model, temperature, pitch_shift, progress)
    rtf = max(out.seconds, 1e-6) / seconds
    runs = remember(timings, mel, model, rtf)
    teacher_can_run = "teacher" in vocoder.available_models and seconds <= limits.teacher_max_seconds
    mel_in = mel[0].cpu().numpy()  # (n_mels, F)
    scale = colour_scale(mel_in, out.mel)
    image_in, image_out = mel_image(mel_in, scale), mel_image(out.mel, scale)
    summary = summarize(model, seconds, rtf, runs, teacher_can_run)
    if vocoder.pitch_model is not None:  # the contour the student ran on (shifted), and the output's own
        f0_in = contour(vocoder, mel_in) * (pitch_shift if model == "student" else 1.0)
        f0_out = contour(vocoder, out.mel)
        image_in = draw_contour(image_in, f0_in, vocoder.audio)
        image_out = draw_contour(image_out, f0_out, vocoder.audio)
        summary += " " + pitch_summary(f0_in, f0_out, pitch_shift if model == "student" else 1.0)
    return VocodeResult((vocoder.audio.sample_rate, to_int16(out.wav.numpy())), image_in, image_out, summary)


def synthesize(vocoder: Vocoder, mel: Tensor, model: str, temperature: float, pitch_shift: float = 1.0,
               progress: Callable[[int, int], None] | None = None) -> Synthesis:
    """One model on the mel (1, n_mels, F), timed; the library's refusals become one-line gr.Errors."""
    start = time.perf_counter()
    try:
        wav = vocoder.synthesize(mel, model, temperature, progress=progress,
                                 pitch_shift=pitch_shift)[0]  # (F * hop,); callers pass 1 to a mel-only model
    except ValueError as exc:  # MelError and the library's other refusals
        raise refusal(str(exc)) from exc
    elapsed = time.perf_counter() - start
    return Synthesis(wav, elapsed, vocoder.mel(wav)[0].cpu().numpy())


def contour(vocoder: Vocoder, mel: np.ndarray) -> np.ndarray:
    """The pitch predictor's F0 (F,) in Hz, 0 where unvoiced, for a log-mel (n_mels, F) that was checked on
    the way in or that the vocoder made."""
    return vocoder.pitch(mel, check=False)[0][0].numpy()


def pitch_summary(f0_in: np.ndarray, f0_out: np.ndarray, pitch_shift: float) -> str:
    """Median F0 of the input's contour (as vocoded) and of the output's, on frames voiced in both."""
    both = (f0_in > 0) & (f0_out > 0)
    if not both.any():
        return "No voiced frames: no F0 contour."
    shift = f" (the input's ×{pitch_shift:g})" if pitch_shift != 1.0 else ""
    return (f"F0 (cyan), median over frames voiced in both: {np.median(f0_in[both]):.0f} Hz asked for{shift}, "
            f"{np.median(f0_out[both]):.0f} Hz in the output.")


def check_request(vocoder: Vocoder, model: str, temperature: float, pitch_shift: float = 1.0) -> None:
    if model not in MODELS:
        raise refusal(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if model not in vocoder.available_models:
        available = ", ".join(vocoder.available_models)
        raise refusal(f"this checkpoint has no trained {model}; available: {available}")
    check_range("temperature", temperature, TEMPERATURE_RANGE)
    check_range("pitch shift", pitch_shift, PITCH_SHIFT_RANGE)
    try:  # the vocoder's own rule: only a pitch-driven model takes a shift
        vocoder.check_pitch_control(model, False, pitch_shift)
    except PitchError as exc:
        raise refusal(str(exc)) from exc


def check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not isinstance(value, (int, float)) or not low <= value <= high:  # NaN fails too
        raise refusal(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def compare(audio_file: str | Path | None, temperature: float = 1.0, mel_file: str | Path | None = None,
            pitch_shift: float = 1.0, *, vocoder: Vocoder, limits: Limits = Limits(),
            progress: Callable[[int, int], None] | None = None
            ) -> tuple[tuple[int, np.ndarray] | None, tuple[int, np.ndarray] | None,
                       tuple[int, np.ndarray] | None, str]:
    """Every model on the same input: (student audio, teacher audio, Griffin-Lim audio, markdown table of
    wall time, real-time factor and mel distance to the input). A model that cannot run (not in the
    checkpoint, input too long for the teacher) gives None and says why in the table."""
    check_range("temperature", temperature, TEMPERATURE_RANGE)
    check_range("pitch shift", pitch_shift, PITCH_SHIFT_RANGE)
    mel = read_input(vocoder, audio_file, mel_file)
    seconds = mel.shape[-1] * vocoder.audio.hop_length / vocoder.audio.sample_rate
    check_duration(seconds, "griffin-lim", limits)
    mel_in = mel[0].cpu().numpy()
    audios: list[tuple[int, np.ndarray] | None] = []
    rows = ["| model | wall time | real-time factor | mel distance to the input |", "|---|---|---|---|"]
    for model in MODELS:
        if model not in vocoder.available_models:
            why = "not in this checkpoint"
        elif seconds > limits.seconds_for(model):
            why = f"input longer than its {limits.seconds_for(model):g} s cap"
        else:
            why = ""
        if why:
            audios.append(None)
            rows.append(f"| {MODEL_LABELS[model]} | – | – | skipped: {why} |")
            continue
        shift = pitch_shift if vocoder.pitch_driven(model) else 1.0
        out = synthesize(vocoder, mel, model, temperature, shift, progress if model == "teacher" else None)
        audios.append((vocoder.audio.sample_rate, to_int16(out.wav.numpy())))
        distance = float(np.mean(np.abs(out.mel - mel_in)))
        note = f" (pitch ×{shift:g})" if shift != 1.0 else ""
        rows.append(f"| {MODEL_LABELS[model]}{note} | {out.seconds:.2f} s | {out.seconds / seconds:.3g} | "
                    f"{distance:.3f} |")
    rows.append(f"\n{seconds:.2f} s of audio; mel distance: mean |log-mel of the output − input log-mel| "
                "(lower is closer).")
    return (*audios, "\n".join(rows))


def check_duration(seconds: float, model: str, limits: Limits) -> None:
    limit = limits.seconds_for(model)
    if seconds > limit:
        hint = f", or choose the student (up to {limits.max_seconds:g} s)" if model == "teacher" else ""
        raise refusal(f"the input is {seconds:.2f} s long; the {model} takes at most {limit:g} s. "
                      f"Trim it{hint}.")


def read_input(vocoder: Vocoder, audio_file: str | Path | None, mel_file: str | Path | None) -> Tensor:
    """The mel to vocode, (1, n_mels, F): from the mel file if there is one, else from the audio."""
    if mel_file:
        if audio_file:
            gr.Warning("Both an audio file and a mel file were given: vocoding the mel file.")
        return read_mel_file(Path(mel_file), vocoder.audio)
    if audio_file:
        return audio_to_mel(vocoder, Path(audio_file))
    raise refusal("no input: upload or record audio, or upload a log-mel spectrogram (.npy)")


def audio_to_mel(vocoder: Vocoder, path: Path) -> Tensor:
    """Decode with soundfile (wav, flac, ogg, mp3; no ffmpeg), resample, take the log-mel."""
    try:
        wav = load_audio(path, vocoder.audio.sample_rate)  # (T,)
        return vocoder.mel(wav)  # (1, n_mels, T // hop)
    except AudioError as exc:
        raise refusal(str(exc), path) from exc


def read_mel_file(path: Path, audio: AudioConfig) -> Tensor:
    """A (n_mels, F) or (1, n_mels, F) float .npy, read without pickle, checked against the convention."""
    try:
        with open(path, "rb") as handle:
            is_npy = handle.read(len(NPY_MAGIC)) == NPY_MAGIC
        array = np.load(path, allow_pickle=False) if is_npy else None
    except (ValueError, OSError, EOFError) as exc:
        raise refusal(f"{path.name}: unreadable .npy file ({one_line(str(exc), path)})") from exc
    if array is None:
        raise refusal(f"{path.name}: not a .npy file (no NumPy header); save the mel with numpy.save")
    if array.dtype.kind != "f":
        raise refusal(f"{path.name}: holds {array.dtype} values; expected a floating-point log-mel")
    try:
        mel = check_mel(array, audio, name=path.name)  # (B, n_mels, F); its warnings go to the server log
    except MelError as exc:
        raise refusal(str(exc), path) from exc
    if mel.shape[0] != 1:
        raise refusal(f"{path.name}: holds a batch of {mel.shape[0]} mels; upload one (n_mels, frames) array")
    mismatch = mel_convention_mismatch(mel, audio)
    if mismatch:  # on the page too (not by catching warnings: that is process-wide, unsafe across requests)
        gr.Warning(html.escape(f"{path.name}: {mismatch}", quote=False))
    return mel


def remember(timings: dict[str, dict[str, float]] | None, mel: Tensor, model: str,
             rtf: float) -> dict[str, float]:
    """Store this run's real-time factor under the input's fingerprint; all runs on that input."""
    if timings is None:
        return {model: rtf}
    key = hashlib.sha1(mel.cpu().numpy().tobytes(), usedforsecurity=False).hexdigest()
    runs = timings.pop(key, {})  # re-inserted last: the oldest input is forgotten first
    runs[model] = rtf
    timings[key] = runs
    while len(timings) > KEPT_INPUTS:
        timings.pop(next(iter(timings)))
    return runs


def summarize(model: str, seconds: float, rtf: float, runs: dict[str, float], teacher_can_run: bool) -> str:
    """Markdown: audio length, wall time, real-time factor, and the speed-up over the teacher."""
    pace = f"{1 / rtf:.1f}× faster than real time" if rtf < 1 else f"{rtf:.1f}× slower than real time"
    line = (f"**{MODEL_LABELS[model]}**: {seconds:.2f} s of audio in {rtf * seconds:.2f} s wall time, "
            f"real-time factor {rtf:.3g} ({pace}).")
    others = [m for m in MODELS if m != "teacher" and m in runs]
    if "teacher" in runs and others:
        gains = ", ".join(f"{m} {runs['teacher'] / runs[m]:.0f}×" for m in others)
        line += f" Speed-up over the teacher on this input: {gains}."
    elif model != "teacher" and teacher_can_run:
        line += " Run the teacher on the same input to see the speed-up over it."
    return line


def to_int16(wav: np.ndarray) -> np.ndarray:
    """(T,) float in [-1, 1] -> (T,) int16 PCM."""
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def one_line(message: str, path: Path | None = None) -> str:
    """The first line of a message, with the server's temporary path shortened to the file's name."""
    lines = message.strip().splitlines()
    line = lines[0] if lines else "unknown error"
    return line.replace(str(path), path.name) if path is not None else line


def refusal(message: str, path: Path | None = None) -> gr.Error:
    """A gr.Error for the page and the API client: one line, no traceback in the server log."""
    return gr.Error(html.escape(one_line(message, path), quote=False), print_exception=False)
