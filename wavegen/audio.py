"""Audio I/O and the mel frontend.

Audio in memory is mono float32 in [-1, 1] at the model's sample rate. Files are read and written
with soundfile (wav, flac, ogg, mp3; no ffmpeg). The log-mel follows `AudioConfig` (design §3) and
is computed with torchaudio's transforms so it also runs on the GPU inside training.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from wavegen.config import AudioConfig

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
MAX_PEAK = 8.0  # samples above this are not a float waveform scaled to [-1, 1]


class AudioError(ValueError):
    """An audio file or waveform cannot be used; the message names the file and the problem."""


class MelError(ValueError):
    """A mel spectrogram does not match the model's mel convention."""


class MelConventionWarning(UserWarning):
    """A mel's values look like another convention (log10, dB, linear, normalised)."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any file soundfile reads into mono float32 at `sample_rate`.

    Returns (T,). Stereo is averaged; other rates are resampled. Raises AudioError naming the
    file for an unreadable, empty or non-finite file.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({first_line(exc)})") from exc
    except OSError as exc:
        raise AudioError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = check_waveform(wav, str(path))
    if file_rate != sample_rate:
        wav = resample(wav, file_rate, sample_rate)
    return wav


def check_waveform(wav: np.ndarray, name: str = "waveform") -> np.ndarray:
    """Reject non-finite samples; bring a too-loud float signal back into [-1, 1] (with a warning)."""
    wav = np.asarray(wav, dtype=np.float32)
    if not np.all(np.isfinite(wav)):
        bad = int(np.size(wav) - np.isfinite(wav).sum())
        raise AudioError(f"{name}: {bad} sample(s) are NaN or infinite")
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 1.0:
        warnings.warn(f"{name}: peak {peak:.3g} exceeds 1.0; scaling the waveform to a peak of 0.99",
                      stacklevel=2)
        wav = wav * (0.99 / peak)
    return wav


def resample(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """(T,) float32 at orig_rate -> (T',) float32 at new_rate (torchaudio's windowed sinc)."""
    if orig_rate == new_rate:
        return wav
    divisor = math.gcd(int(orig_rate), int(new_rate))
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wav)),
                                         orig_rate // divisor, new_rate // divisor)
    return out.numpy().astype(np.float32)


def save_audio(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write mono audio atomically: a temporary file beside `path`, then rename.

    A reader never sees a half-written file, even if the process is killed mid-write.
    """
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{path}: refusing to write non-finite audio")
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    subtype = "PCM_16" if fmt == "WAV" else None
    return atomic_write(path, lambda tmp: sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate,
                                                   format=fmt, subtype=subtype))


def atomic_write(path: Path, write) -> Path:
    """Call `write(tmp_path)` on a temporary file in path's folder, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.lru_cache(maxsize=8)
def _mel_transform(audio: AudioConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=audio.sample_rate, n_fft=audio.n_fft, win_length=audio.win_length,
        hop_length=audio.hop_length, f_min=audio.f_min, f_max=audio.f_max, n_mels=audio.n_mels,
        window_fn=torch.hann_window, power=1.0, center=True, pad_mode="reflect",
        norm="slaney", mel_scale="slaney",
    )


@functools.lru_cache(maxsize=8)
def mel_filterbank(audio: AudioConfig) -> torch.Tensor:
    """(n_freqs, n_mels): the filterbank `MelFrontend` applies (its own, copied out of inference mode so that
    training may use what an inference call cached first)."""
    with torch.inference_mode(False), torch.no_grad():
        return _mel_transform(audio).mel_scale.fb.clone()


@functools.lru_cache(maxsize=8)
def bin_band_weights(audio: AudioConfig) -> torch.Tensor:
    """(n_freqs, n_mels): each STFT bin's weights over the mel bands it lies in, as the filterbank weights them
    (rows sum to 1, or 0 for a bin in no band): how a per-band quantity is read at a bin. Made outside inference
    mode, like `mel_filterbank`."""
    with torch.inference_mode(False), torch.no_grad():
        fbank = mel_filterbank(audio)
        return fbank / fbank.sum(dim=1, keepdim=True).clamp(min=1e-12)


class MelFrontend(torch.nn.Module):
    """Waveform (B, T) -> log-mel (B, n_mels, T // hop_length).

    Centred frames give T // hop + 1 frames; the last one (centred past the end) is dropped so
    that a mel of F frames pairs with exactly F * hop samples.
    """

    def __init__(self, audio: AudioConfig):
        super().__init__()
        self.audio = audio
        self.transform = _mel_transform(audio)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // self.audio.hop_length
        if frames == 0:
            raise AudioError(f"audio of {wav.shape[-1]} samples is shorter than one hop "
                             f"({self.audio.hop_length} samples)")
        transform = self.transform.to(wav.device)
        if wav.shape[-1] <= self.audio.n_fft // 2:  # reflect padding needs more than half a window
            wav = torch.nn.functional.pad(wav, (0, self.audio.n_fft // 2 + 1 - wav.shape[-1]))
        mel = transform(wav.float())[..., :frames]  # (B, n_mels, frames)
        return torch.log(torch.clamp(mel, min=self.audio.log_floor))


def log_mel(wav: np.ndarray | torch.Tensor, audio: AudioConfig) -> torch.Tensor:
    """Convenience: (T,) or (B, T) waveform -> (n_mels, F) or (B, n_mels, F) log-mel."""
    wav = torch.as_tensor(np.asarray(wav, dtype=np.float32)) if isinstance(wav, np.ndarray) else wav
    return MelFrontend(audio)(wav)


def check_mel(mel: torch.Tensor | np.ndarray, audio: AudioConfig, name: str = "mel") -> torch.Tensor:
    """Validate an incoming mel against the convention; returns it as (B, n_mels, F) float32.

    Wrong rank, wrong band count, no frames or non-finite values raise MelError. Values far outside
    the natural-log convention raise a MelConventionWarning naming the likely mismatch.
    """
    mel = torch.as_tensor(np.asarray(mel) if isinstance(mel, np.ndarray) else mel)
    if mel.ndim == 2:
        mel = mel.unsqueeze(0)
    if mel.ndim != 3:
        raise MelError(f"{name}: expected a mel of shape (n_mels, frames) or (batch, n_mels, frames), "
                       f"got shape {tuple(mel.shape)}")
    if mel.shape[1] != audio.n_mels:
        hint = " (it looks transposed: frames first)" if mel.shape[2] == audio.n_mels else ""
        raise MelError(f"{name}: has {mel.shape[1]} mel bands, the model expects {audio.n_mels}{hint}")
    if mel.shape[2] == 0:
        raise MelError(f"{name}: has no frames")
    if not mel.is_floating_point():
        raise MelError(f"{name}: expected floating-point values, got {mel.dtype}")
    mel = mel.float()
    if not torch.isfinite(mel).all():
        raise MelError(f"{name}: contains NaN or infinite values")
    mismatch = mel_convention_mismatch(mel, audio)
    if mismatch:
        warnings.warn(f"{name}: {mismatch}", MelConventionWarning, stacklevel=2)
    return mel


def mel_convention_mismatch(mel: torch.Tensor, audio: AudioConfig) -> str | None:
    """A sentence naming the likely convention mismatch, or None when the values look right."""
    floor = math.log(audio.log_floor)  # about -11.5
    lo, hi = float(mel.min()), float(mel.max())
    expected = f"wavegen expects natural-log mels floored at log({audio.log_floor:g}) = {floor:.1f}"
    if lo < floor - 0.5 or hi > 8.0:
        if lo < -20.0 or hi > 20.0:
            return (f"values span [{lo:.1f}, {hi:.1f}]: this looks like a dB mel (20*log10); {expected}. "
                    f"Convert with mel_ln = mel_db / 20 * ln(10)")
        return f"values span [{lo:.1f}, {hi:.1f}], outside the natural-log range; {expected}"
    if lo >= 0.0:
        return (f"all values are >= 0 (range [{lo:.2f}, {hi:.2f}]): this looks like a linear-magnitude "
                f"or [0, 1]-normalised mel; {expected}")
    if lo > math.log10(audio.log_floor) - 0.05 and hi - lo < 5.5:  # never below log10(1e-5) = -5
        return (f"values span [{lo:.2f}, {hi:.2f}], never below -5, a narrow range: this looks like a "
                f"log10 mel; {expected}. Convert with mel_ln = mel_log10 * ln(10)")
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


MEL_EXTENSIONS = (".npy", ".pt")


def load_mel_file(path: str | Path, audio: AudioConfig) -> torch.Tensor:
    """A `.npy` (no pickles) or `.pt` (weights_only) mel file -> checked (1, n_mels, F) tensor."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            mel = np.load(path, allow_pickle=False)
        else:
            mel = torch.load(str(path), map_location="cpu", weights_only=True)
    except (ValueError, OSError, EOFError, RuntimeError) as exc:
        raise MelError(f"{path}: not a readable mel file ({first_line(exc)})") from exc
    if not isinstance(mel, (np.ndarray, torch.Tensor)):
        raise MelError(f"{path}: holds a {type(mel).__name__}, not a mel array")
    if isinstance(mel, np.ndarray) and not np.issubdtype(mel.dtype, np.number):
        raise MelError(f"{path}: holds {mel.dtype} values, not numbers")
    return check_mel(torch.as_tensor(mel), audio, name=str(path))


PITCH_FLOOR, PITCH_CEILING = 50.0, 800.0  # Hz: the labeller's search range (speech, children included)


PITCH_TRACKERS = ("dio", "harvest", "vote")  # pYIN alone reads 31 % of white noise voiced: a voter only
DEFAULT_LABELLER = "dio"


def check_labeller(tracker: str) -> None:
    if tracker not in PITCH_TRACKERS:
        raise ValueError(f"tracker must be one of {', '.join(PITCH_TRACKERS)}, got {tracker!r}")


AGREE_CENTS = 50.0  # two trackers' F0 within this many cents name the same pitch (the gross-error bound)


def pitch_labels(wav: np.ndarray, audio: AudioConfig, tracker: str = DEFAULT_LABELLER) -> np.ndarray:
    """(F * hop,) waveform -> (F,) F0 in Hz at the mel frames (frame f centred at sample f * hop), 0 where
    unvoiced. `tracker`: "dio" (WORLD's DIO + StoneMask, via pyworld; 54x real time on one core here),
    "harvest" (WORLD's Harvest, 2.5x) or "vote": those two and librosa's pYIN by majority (`vote_labels`,
    1.6x)."""
    check_labeller(tracker)
    frames = wav.size // audio.hop_length
    if tracker == "vote":
        dio, harvest = (pitch_labels(wav, audio, t) for t in ("dio", "harvest"))
        return vote_labels(dio, harvest, *pyin_opinion(wav, audio))
    import warnings

    with warnings.catch_warnings():  # pyworld's __init__ imports the deprecated pkg_resources
        warnings.simplefilter("ignore", UserWarning)
        import pyworld

    x = np.ascontiguousarray(wav, dtype=np.float64)
    period = 1000.0 * audio.hop_length / audio.sample_rate
    if tracker == "harvest":
        f0, _ = pyworld.harvest(x, audio.sample_rate, f0_floor=PITCH_FLOOR, f0_ceil=PITCH_CEILING, frame_period=period)
    else:
        f0, times = pyworld.dio(x, audio.sample_rate, f0_floor=PITCH_FLOOR, f0_ceil=PITCH_CEILING,
                                frame_period=period)
        f0 = pyworld.stonemask(x, f0, times, audio.sample_rate)
    out = np.zeros(frames, dtype=np.float32)
    out[: min(frames, f0.size)] = f0[:frames]
    return out


def pyin_opinion(wav: np.ndarray, audio: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """(F * hop,) waveform -> pYIN at the mel frames: its best F0 guess on every frame (F,) and its voicing
    decision (F,) bool."""
    import librosa  # slow to import; only labelling needs it

    frames = wav.size // audio.hop_length
    f0, voiced, _ = librosa.pyin(wav.astype(np.float32), fmin=PITCH_FLOOR, fmax=PITCH_CEILING,
                                 sr=audio.sample_rate, frame_length=audio.n_fft, hop_length=audio.hop_length,
                                 center=True, fill_na=None)
    guess, flag = np.zeros(frames, dtype=np.float32), np.zeros(frames, dtype=bool)
    n = min(frames, f0.size)
    guess[:n], flag[:n] = np.nan_to_num(f0[:n]), voiced[:n]
    return guess, flag


def vote_labels(dio: np.ndarray, harvest: np.ndarray, pyin_f0: np.ndarray, pyin_voiced: np.ndarray) -> np.ndarray:
    """Three trackers' opinions per frame (F,) -> one label (F,), F0 in Hz, 0 where unvoiced. A frame is
    voiced where at least two of DIO, Harvest and pYIN call it voiced. Its F0 is DIO's (StoneMask-refined,
    the most precise) where DIO and Harvest agree within AGREE_CENTS, else whichever of the two voiced ones
    lies nearer pYIN's guess: a tracker's octave slips and onset glitches are outvoted."""
    voiced = ((dio > 0).astype(int) + (harvest > 0) + pyin_voiced) >= 2

    def cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(1200.0 * np.log2(np.maximum(a, 1e-3) / np.maximum(b, 1e-3)))

    agree = (dio > 0) & (harvest > 0) & (cents(dio, harvest) <= AGREE_CENTS)
    dio_nearer = np.where(harvest > 0, np.where(dio > 0, cents(dio, pyin_f0) <= cents(harvest, pyin_f0), False), True)
    f0 = np.where(agree | dio_nearer, dio, harvest)
    return np.where(voiced, f0, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int, device: str) -> torch.Tensor:
    return torch.hann_window(n_fft, device=device)


def stft_magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(B, T) -> (B, n_fft // 2 + 1, frames) magnitude, Hann window, hop n_fft // 4."""
    spec = torch.stft(x.float(), n_fft, hop_length=n_fft // 4, win_length=n_fft,
                      window=_hann(n_fft, str(x.device)), center=True, return_complex=True)
    return spec.abs().clamp(min=1e-7)


def stft_distance(x: torch.Tensor, y: torch.Tensor, ffts: tuple[int, ...]) -> torch.Tensor:
    """Multi-resolution STFT distance of x to the reference y, both (B, T): spectral convergence + log-magnitude
    L1, averaged over the resolutions `ffts`. The student's training loss and `wavegen eval`'s metric."""
    total = x.new_zeros(())
    for n_fft in ffts:
        mag_x, mag_y = stft_magnitude(x, n_fft), stft_magnitude(y, n_fft)
        convergence = torch.linalg.norm(mag_y - mag_x) / torch.linalg.norm(mag_y).clamp(min=1e-7)
        log_mag = torch.mean(torch.abs(torch.log(mag_y) - torch.log(mag_x)))
        total = total + convergence + log_mag
    return total / len(ffts)
