"""The public inference API, used by the CLI and the app.

    vocoder = Vocoder.load("default")          # a shipped checkpoint folder, or a path
    mel = vocoder.mel(wav)                     # (B, n_mels, F)
    wav = vocoder.synthesize(mel, model="student")   # (B, F * hop)

Inference never imports the training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor

from wavegen.audio import MelFrontend, check_mel
from wavegen.checkpoint import CheckpointError, import_model
from wavegen.config import AudioConfig, Preset
from wavegen.models import Student, Teacher
from wavegen.models.teacher import Progress

MODELS = ("student", "teacher", "griffin-lim")
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
GRIFFIN_LIM_ITERATIONS = 32


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A folder path, or the name of a folder under the shipped `checkpoints/`."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    shipped = CHECKPOINTS_DIR / str(path_or_name)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in CHECKPOINTS_DIR.iterdir() if p.is_dir()) if CHECKPOINTS_DIR.is_dir() else []
    raise CheckpointError(f"no checkpoint folder {str(path_or_name)!r}; shipped: {names or 'none'}")


class Vocoder:
    """Mel -> waveform with the student (parallel), the teacher (sequential) or Griffin-Lim."""

    def __init__(self, audio: AudioConfig, teacher: Teacher | None = None, student: Student | None = None,
                 device: str | torch.device = "auto"):
        self.audio = audio
        self.device = resolve_device(device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.student = student.to(self.device).eval() if student is not None else None
        self.frontend = MelFrontend(audio)

    @classmethod
    def from_preset(cls, preset: Preset, device: str | torch.device = "auto") -> Vocoder:
        """A vocoder with no trained models: only Griffin-Lim can synthesise."""
        return cls(preset.audio, device=device)

    @classmethod
    def load(cls, path_or_name: str | Path = "default", device: str | torch.device = "auto") -> Vocoder:
        """Load `teacher.safetensors` and/or `student.safetensors` from a checkpoint folder."""
        folder = resolve_checkpoint(path_or_name)
        models, audio = {}, None
        for kind in ("teacher", "student"):
            path = folder / f"{kind}.safetensors"
            if path.exists():
                models[kind], preset = import_model(path, kind)
                if audio is not None and preset.audio != audio:
                    raise CheckpointError(f"{folder}: teacher and student use different mel conventions")
                audio = preset.audio
        if audio is None:
            raise CheckpointError(f"{folder}: holds neither teacher.safetensors nor student.safetensors")
        return cls(audio, models.get("teacher"), models.get("student"), device=device)

    @property
    def available_models(self) -> list[str]:
        return [m for m in MODELS if m == "griffin-lim" or getattr(self, m) is not None]

    @torch.inference_mode()
    def mel(self, wav: Tensor | np.ndarray) -> Tensor:
        """(T,) or (B, T) waveform at audio.sample_rate -> (B, n_mels, T // hop) log-mel."""
        wav = torch.as_tensor(np.asarray(wav, dtype=np.float32) if isinstance(wav, np.ndarray) else wav)
        wav = wav.reshape(1, -1) if wav.ndim == 1 else wav
        return self.frontend(wav.to(self.device))

    @torch.inference_mode()
    def synthesize(self, mel: Tensor | np.ndarray, model: str = "student", temperature: float = 1.0,
                   seed: int | None = None, progress: Progress | None = None) -> Tensor:
        """mel (n_mels, F) or (B, n_mels, F) -> waveform (B, F * hop) in [-1, 1], on the CPU."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
        if model != "griffin-lim" and getattr(self, model) is None:
            raise ValueError(f"this checkpoint has no {model}; available: {self.available_models}")
        mel = check_mel(mel, self.audio).to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        if model == "griffin-lim":
            wav = griffin_lim(mel, self.audio)
        elif model == "teacher":
            wav = self.teacher.generate(mel, temperature, progress=progress, generator=generator)
        else:
            wav = self.student.sample(mel, temperature=temperature, generator=generator)[0]
        return wav.clamp(-1.0, 1.0).float().cpu()


def griffin_lim(mel: Tensor, audio: AudioConfig, n_iter: int = GRIFFIN_LIM_ITERATIONS) -> Tensor:
    """(B, n_mels, F) log-mel -> (B, F * hop): pseudo-inverse mel filterbank + Griffin-Lim."""
    fbank = torchaudio.functional.melscale_fbanks(
        audio.n_fft // 2 + 1, audio.f_min, audio.f_max, audio.n_mels, audio.sample_rate,
        norm="slaney", mel_scale="slaney").to(mel.device)  # (n_freqs, n_mels)
    magnitude = (torch.linalg.pinv(fbank.T) @ torch.exp(mel)).clamp(min=0.0)  # (B, n_freqs, F)
    # F * hop samples have F + 1 centred frames: repeat the last one (the mel drops it).
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
    transform = torchaudio.transforms.GriffinLim(
        n_fft=audio.n_fft, n_iter=n_iter, win_length=audio.win_length, hop_length=audio.hop_length,
        power=1.0, length=mel.shape[-1] * audio.hop_length, rand_init=False).to(mel.device)
    return transform(magnitude)
