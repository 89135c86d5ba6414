"""The public inference API, used by the CLI and the app.

    vocoder = Vocoder.load("default")          # a shipped checkpoint folder, or a path
    mel = vocoder.mel(wav)                     # (B, n_mels, F)
    wav = vocoder.synthesize(mel, model="student")   # (B, F * hop)

Inference never imports the training code.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torchaudio
from torch import Tensor

from wavegen.audio import MelFrontend, check_mel, mel_filterbank
from wavegen.checkpoint import CheckpointError, import_model
from wavegen.config import AudioConfig, DistillConfig, PitchConfig, Preset
from wavegen.models import Student, Teacher
from wavegen.models.pitch import PitchPredictor, voiced
from wavegen.models.teacher import Progress
from wavegen.models.student import Body
from wavegen.nn.packed import pack
from wavegen.nn.source import Knots
from wavegen.nn.envelope import RETUNED_SMOOTHING
from wavegen.refine import REFINE_SMOOTHING, REFINE_STEPS, match_mel

MODELS = ("student", "teacher", "griffin-lim")
PRECISIONS = ("fp32", "bf16")
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
GRIFFIN_LIM_ITERATIONS = 32
# Student chunk length. The flows stream from chunk to chunk with nothing recomputed, so shorter chunks
# only add calls, while longer ones push the packed pass's buffers out of cache; measured RTF of the default
# student on 5 s, 2 threads, one run (scripts/levers.py): bf16 16 frames 0.071, 32 0.065, 48 0.065,
# 64 0.067, 128 0.077; fp32 packed 48 0.139, 128 0.161; the fp32 conv1d flows 48 0.248, 128 0.283.
CHUNK_FRAMES = 48
UPSAMPLER_CONTEXT = 2  # mel frames the upsampler's convolutions (and interpolation) see on either side
PITCH_SHIFT_RANGE = (0.5, 2.0)


class Contour(NamedTuple):
    """What a pitch-driven model runs on: F0 (B, F) in Hz, the harmonics' weight (B, F) in [0, 1], and
    whether the F0 differs from the mel's own (shifted or the caller's: `HarmonicNoise.frame_params`)."""

    f0: Tensor
    voicing: Tensor
    retuned: bool


class StudentPath(NamedTuple):
    """The student's flow bodies and the conditioning they take from a mel (B, n_mels, F): per sample
    (B, n_mels, F * hop), or `Knots` at frame rate for bodies that project per frame (`wavegen.nn.packed`);
    no bodies and no conditioning for a student whose only flow is the harmonic flow 0."""

    bodies: Sequence[Body]
    upsample: Callable[[Tensor], Tensor | Knots] | None

    def frames(self, mel: Tensor, start: int, end: int) -> Tensor | Knots | None:
        """The conditioning of frames [start, end) of mel, a window with the upsampler's context around them."""
        if self.upsample is None:
            return None
        cond = self.upsample(mel)
        if isinstance(cond, Knots):
            return cond.frames(start, end)
        hop = cond.shape[-1] // mel.shape[-1]
        return cond[..., start * hop:end * hop]


class ModelUnavailable(ValueError):
    """The requested synthesis path is unknown or not in this checkpoint."""


class PitchError(ValueError):
    """A pitch shift out of range, or an F0 contour that does not fit the mel."""


def check_pitch_shift(pitch_shift: float) -> float:
    if not PITCH_SHIFT_RANGE[0] <= pitch_shift <= PITCH_SHIFT_RANGE[1]:
        raise PitchError(f"pitch shift must be within {PITCH_SHIFT_RANGE[0]} and {PITCH_SHIFT_RANGE[1]}, "
                         f"got {pitch_shift}")
    return pitch_shift


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The student's arithmetic: "fp32" (equal to the flows' own pass to float rounding) or "bf16" (its
    GEMM operands in bfloat16, `wavegen.nn.packed`); "auto" is bf16 on CPUs with native bf16 matrix
    instructions, else fp32."""
    if precision == "auto":
        native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bf16" if native else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16" and device.type != "cpu":
        raise ValueError("the bf16 student path is for the CPU; on CUDA use fp32")
    return precision


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
                 device: str | torch.device = "auto", chunk_frames: int | None = None, precision: str = "auto",
                 pitch: PitchPredictor | None = None, student_training: DistillConfig | None = None):
        """`student_training`: the distillation settings the student was trained with (its file's preset), so
        that what is said about it (`distilled`) follows the checkpoint; None when unknown."""
        self.audio = audio
        self.student_training = student_training
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.chunk_frames = chunk_frames or CHUNK_FRAMES
        self._student_path: StudentPath | None = None
        self._student_lock = threading.Lock()  # the packed bodies' workspace serves one call at a time
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.student = student.to(self.device).eval() if student is not None else None
        self.pitch_model = pitch.to(self.device).eval() if pitch is not None else None
        self.frontend = MelFrontend(audio)

    @classmethod
    def from_preset(cls, preset: Preset, device: str | torch.device = "auto") -> Vocoder:
        """A vocoder with no trained models: only Griffin-Lim can synthesise."""
        return cls(preset.audio, device=device)

    @classmethod
    def load(cls, path_or_name: str | Path = "default", device: str | torch.device = "auto",
             precision: str = "auto") -> Vocoder:
        """Load `teacher.safetensors` and/or `student.safetensors` (and `pitch.safetensors`, the F0
        predictor a pitch-driven student needs) from a checkpoint folder."""
        folder = resolve_checkpoint(path_or_name)
        models, audio, student_training = {}, None, None
        for kind in ("teacher", "student", "pitch"):
            path = folder / f"{kind}.safetensors"
            if path.exists():
                models[kind], preset = import_model(path, kind)
                if kind == "student":
                    student_training = preset.distill
                if audio is not None and preset.audio != audio:
                    raise CheckpointError(f"{folder}: teacher and student use different mel conventions")
                audio = preset.audio
        if audio is None:
            raise CheckpointError(f"{folder}: holds neither teacher.safetensors nor student.safetensors")
        student = models.get("student")
        if student is not None and student.source is not None and "pitch" not in models:
            raise CheckpointError(f"{folder}: the student is pitch-driven but the folder has no pitch.safetensors")
        return cls(audio, models.get("teacher"), student, device=device, precision=precision,
                   pitch=models.get("pitch"), student_training=student_training)

    @property
    def distilled(self) -> bool | None:
        """Whether the student learned from a teacher (density distillation, `distill.kl_weight` > 0) rather than
        from spectral losses alone; None without a student or when its training is unknown."""
        if self.student is None or self.student_training is None:
            return None
        return self.student_training.kl_weight > 0

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
    def pitch(self, mel: Tensor | np.ndarray, check: bool = True) -> tuple[Tensor, Tensor]:
        """mel (n_mels, F) or (B, n_mels, F) -> F0 (B, F) in Hz, 0 where unvoiced, and the voicing
        probability (B, F), from the checkpoint's pitch predictor. `check=False` skips the validation and
        convention warning, for a mel that was checked already or that `mel()` made."""
        if self.pitch_model is None:
            raise ModelUnavailable("this checkpoint has no pitch predictor (pitch.safetensors)")
        mel = check_mel(mel, self.audio) if check else torch.as_tensor(mel).reshape(-1, *mel.shape[-2:])
        f0, voicing = self.pitch_model.predict(mel.to(self.device))
        return torch.where(voiced(voicing) > 0, f0, torch.zeros_like(f0)).cpu(), voicing.cpu()

    def pitch_driven(self, model: str) -> bool:
        """Whether `model` runs on an F0 contour (a student with a harmonic flow 0, a teacher with a source)."""
        if model == "student":
            return self.student is not None and self.student.source is not None
        return model == "teacher" and self.teacher is not None and self.teacher.pitch_driven

    def check_pitch_control(self, model: str, f0_given: bool, pitch_shift: float) -> None:
        """A PitchError unless `model` can take a caller's F0 or a pitch shift (0.5-2): a pitch-driven student
        or teacher can; Griffin-Lim and mel-only models read pitch from the mel alone."""
        check_pitch_shift(pitch_shift)
        if (f0_given or pitch_shift != 1.0) and not self.pitch_driven(model):
            what = "a mel-only student" if model == "student" else f"the {model}"
            raise PitchError(f"{what} reads F0 from the mel alone: pitch shift and f0 need a pitch-driven model")

    def source_contour(self, mel: Tensor, f0: Tensor | np.ndarray | None, pitch_shift: float,
                       model: str = "student") -> Contour | None:
        """The F0 (B, F) and voicing (B, F) a pitch-driven `model` runs on: predicted from the mel unless
        `f0` (F,) or (B, F) in Hz (0 unvoiced) is given, times `pitch_shift`; None for a mel-only model."""
        check_pitch_shift(pitch_shift)
        if not self.pitch_driven(model):
            return None
        if f0 is None:
            if self.pitch_model is None:
                raise ModelUnavailable(f"this {model} is pitch-driven: give f0 or load a pitch predictor")
            contour, voicing = self.pitch_model.source(mel)
        else:
            contour = torch.as_tensor(np.asarray(f0, dtype=np.float32) if isinstance(f0, np.ndarray) else f0)
            contour = contour.float().reshape(-1, contour.shape[-1]).expand(mel.shape[0], -1).to(self.device)
            if contour.shape[-1] != mel.shape[-1] or not torch.isfinite(contour).all() or (contour < 0).any():
                raise PitchError(f"f0 must hold {mel.shape[-1]} finite non-negative values per row (one per mel "
                                 f"frame), got shape {tuple(contour.shape)}")
            voicing = (contour > 0).float()
        ceiling = (self.pitch_model.cfg if self.pitch_model is not None else PitchConfig()).f0_max
        highest = float(contour.max()) * pitch_shift if contour.numel() else 0.0
        if highest > ceiling:
            raise PitchError(f"f0 times the pitch shift reaches {highest:.0f} Hz, above "
                             f"this checkpoint's F0 range (up to {ceiling:g} Hz)")
        return Contour(contour * pitch_shift, voicing, f0 is not None or pitch_shift != 1.0)

    @torch.inference_mode()
    def synthesize(self, mel: Tensor | np.ndarray, model: str = "student", temperature: float = 1.0,
                   seed: int | None = None, progress: Progress | None = None, z: Tensor | None = None,
                   f0: Tensor | np.ndarray | None = None, pitch_shift: float = 1.0,
                   refine_steps: int = REFINE_STEPS, refine_smoothing: float = REFINE_SMOOTHING) -> Tensor:
        """mel (n_mels, F) or (B, n_mels, F) -> waveform (B, F * hop) in [-1, 1], on the CPU.

        The student draws z (B, F * hop) once (or takes `z`) and synthesises long inputs in chunks of
        `chunk_frames`, each flow carrying its past in a cache, so peak memory stays bounded and the
        result equals one whole-input pass. A pitch-driven student or teacher runs on the F0 the pitch
        predictor reads from the mel, or on `f0` (F,) or (B, F) in Hz (0 unvoiced), times `pitch_shift` (0.5-2).
        The teacher is sequential; its memory is bounded by its step cache.
        A neural model's output then takes `refine_steps` mel-consistency steps (`wavegen.refine`: its band
        levels, smoothed across `refine_smoothing` bands, brought to the mel's; only the envelope, smoothed across
        4 bands, where the F0 is not the mel's own); `refine_steps=0` returns the model's own sample.
        Griffin-Lim fits the mel by itself.
        """
        if model not in MODELS:
            raise ModelUnavailable(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        if model != "griffin-lim" and getattr(self, model) is None:
            raise ModelUnavailable(f"this checkpoint has no {model}; available: {', '.join(self.available_models)}")
        self.check_pitch_control(model, f0 is not None, pitch_shift)
        mel = check_mel(mel, self.audio).to(self.device)
        contour = self.source_contour(mel, f0, pitch_shift, model)
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        if model == "griffin-lim":
            wav = griffin_lim(mel, self.audio)
        elif model == "teacher":
            pitch = {} if contour is None else {"f0": contour.f0, "voicing": contour.voicing}
            wav = self.teacher.generate(mel, temperature, progress=progress, generator=generator, **pitch)
        else:
            if z is None:
                shape = (mel.shape[0], mel.shape[-1] * self.audio.hop_length)
                z = temperature * torch.randn(shape, generator=generator, device=self.device)
            with self._student_lock:  # concurrent callers (the app's queue runs two) take turns
                wav = self._student_streamed(mel, z.to(self.device), contour)
        wav = wav.float().clamp(-1.0, 1.0)  # what the model's own output sounds like as audio
        if model != "griffin-lim":
            # the steps refine that clipped sample (so they also correct the spectrum clipping changed, and the
            # result is the refinement of what refine_steps=0 returns); a step can leave +-1 again: clip once more
            retuned = contour is not None and contour.retuned
            smoothing = max(refine_smoothing, RETUNED_SMOOTHING) if retuned else refine_smoothing
            wav = match_mel(wav, mel, self.audio, refine_steps, smoothing).clamp(-1.0, 1.0)
        return wav.cpu()

    def student_path(self) -> StudentPath:
        """What runs the student here: on the CPU, packed GEMM copies of the flows (same maths; bf16 or
        float32 operands) that fold the upsampler's last 1x1 conv into their conditioning weights; on
        CUDA, the flows themselves. Built once."""
        if self._student_path is None:
            upsampler = self.student.upsampler
            if upsampler is None:  # no WaveNet flows
                self._student_path = StudentPath([], None)
            elif self.device.type == "cpu":  # an interpolating upsampler's features at frame rate: hop x fewer rows
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
                features = upsampler.knots if upsampler.mode == "interpolate" else upsampler.features
                self._student_path = StudentPath(pack(self.student.flows, dtype, upsampler.projection()), features)
            else:
                self._student_path = StudentPath(list(self.student.flows), upsampler)
        return self._student_path

    def _student_streamed(self, mel: Tensor, z: Tensor, contour: Contour | None) -> Tensor:
        """mel (B, n_mels, F), z (B, F * hop) and (F0, voicing) (B, F) each for a pitch-driven student ->
        x (B, F * hop), `chunk_frames` at a time.

        Each chunk's conditioning is upsampled with UPSAMPLER_CONTEXT frames on either side (the
        upsampler looks up to two frames ahead and one behind); flow 0's frame parameters are computed
        once for the whole mel and sliced; the flows carry their past from chunk to chunk in their
        caches (`Student.transform`), so nothing is recomputed and the result equals one whole-input pass.
        """
        hop, frames = self.audio.hop_length, mel.shape[-1]
        path = self.student_path()
        params = None if contour is None else self.student.source_params(mel, *contour)  # F + 1 frames
        cache = self.student.init_cache(mel.shape[0], z.device)
        out = torch.empty_like(z)
        for start in range(0, frames, self.chunk_frames):
            end = min(frames, start + self.chunk_frames)
            lo, hi = max(0, start - UPSAMPLER_CONTEXT), min(frames, end + UPSAMPLER_CONTEXT)
            cond = path.frames(mel[..., lo:hi], start - lo, end - lo)
            source = None if params is None else tuple(p[..., start:end + 1] for p in params)
            out[:, start * hop:end * hop], _, _, cache = self.student.transform(
                z[:, start * hop:end * hop], cond, path.bodies, cache, source)
        return out

    def synthesize_many(self, mels: list[Tensor], model: str = "student", batch_size: int = 8,
                        temperature: float = 1.0, seed: int | None = None, pitch_shift: float = 1.0,
                        f0s: list[Tensor | np.ndarray] | None = None, refine_steps: int = REFINE_STEPS,
                        refine_smoothing: float = REFINE_SMOOTHING) -> list[Tensor]:
        """Many mels (n_mels, F_i) -> waveforms (F_i * hop,), in batches of similar length.

        `f0s`: one F0 contour (F_i,) in Hz per mel (0 unvoiced) instead of the predicted ones.
        A shorter mel in a batch is padded with the log floor (silence, unvoiced); its output is cut back.
        """
        order = sorted(range(len(mels)), key=lambda i: mels[i].shape[-1])
        results: list[Tensor | None] = [None] * len(mels)
        floor = math.log(self.audio.log_floor)
        for first in range(0, len(order), batch_size):
            chosen = order[first:first + batch_size]
            longest = max(mels[i].shape[-1] for i in chosen)
            batch = torch.stack([torch.nn.functional.pad(torch.as_tensor(mels[i]), (0, longest - mels[i].shape[-1]),
                                                         value=floor) for i in chosen])
            f0 = None if f0s is None else torch.stack([
                torch.nn.functional.pad(torch.as_tensor(f0s[i]).float(), (0, longest - mels[i].shape[-1]))
                for i in chosen])
            wavs = self.synthesize(batch, model, temperature, seed, f0=f0, pitch_shift=pitch_shift,
                                   refine_steps=refine_steps, refine_smoothing=refine_smoothing)
            for row, i in enumerate(chosen):
                results[i] = wavs[row, : mels[i].shape[-1] * self.audio.hop_length]
        return results


def griffin_lim(mel: Tensor, audio: AudioConfig, n_iter: int = GRIFFIN_LIM_ITERATIONS) -> Tensor:
    """(B, n_mels, F) log-mel -> (B, F * hop): pseudo-inverse mel filterbank + Griffin-Lim."""
    fbank = mel_filterbank(audio).to(mel.device)  # (n_freqs, n_mels)
    frames = mel.shape[-1]
    min_frames = audio.n_fft // (2 * audio.hop_length) + 1  # reflect padding needs > n_fft / 2 samples
    if frames < min_frames:  # pad with silence, cut back below
        mel = torch.nn.functional.pad(mel, (0, min_frames - frames), value=math.log(audio.log_floor))
    magnitude = (torch.linalg.pinv(fbank.T) @ torch.exp(mel)).clamp(min=0.0)  # (B, n_freqs, F)
    # F * hop samples have F + 1 centred frames: repeat the last one (the mel drops it).
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
    transform = torchaudio.transforms.GriffinLim(
        n_fft=audio.n_fft, n_iter=n_iter, win_length=audio.win_length, hop_length=audio.hop_length,
        power=1.0, length=mel.shape[-1] * audio.hop_length, rand_init=False).to(mel.device)
    return transform(magnitude)[..., : frames * audio.hop_length]
