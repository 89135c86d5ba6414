"""The two training stages injected into the one loop: teacher MLE and probability density distillation."""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor, nn

from wavegen.audio import MelFrontend, stft_distance
from wavegen.config import Preset
from wavegen.losses import NATS_TO_BITS, distillation_kl, nll
from wavegen.models import Student, Teacher
from wavegen.models.pitch import PitchPredictor, pitch_agreement, voiced
from wavegen.train import Batch, Stage

RENDER_SEED = 0  # validation audio uses its own generator: the training RNG stream is untouched


def _render_frames(preset: Preset, seconds: float, available: int) -> int:
    return max(1, min(available, round(seconds * preset.audio.sample_rate / preset.audio.hop_length)))


# Pitch augmentation: each batch is resampled by one of these (orig, new) rates and played at the model's
# rate, which scales every frequency (F0 and formants) by orig / new: 0.7x to 1.4x, so the predictor
# hears voices lower and higher than the corpus's four.
PITCH_RATIOS = ((7, 10), (4, 5), (9, 10), (1, 1), (1, 1), (10, 9), (5, 4), (7, 5))


def scale_pitch(wav: Tensor, f0: Tensor, ratio: tuple[int, int], hop: int) -> tuple[Tensor, Tensor]:
    """wav (B, F * hop) and its F0 labels (B, F) -> the waveform sped up by r = orig / new (every
    frequency times r) and its labels: frame g of the result is frame g r of the original, F0 times r
    (linear between two voiced frames, else the nearer frame's)."""
    orig, new = ratio
    if orig == new:
        return wav, f0
    out = torchaudio.functional.resample(wav, orig, new)
    frames = out.shape[-1] // hop
    r = orig / new
    position = torch.arange(frames, device=f0.device, dtype=torch.float32) * r
    lo = position.floor().long().clamp(max=f0.shape[-1] - 1)
    hi = (lo + 1).clamp(max=f0.shape[-1] - 1)
    frac = position - lo
    a, b = f0[:, lo], f0[:, hi]
    both = (a > 0) & (b > 0)
    nearer = torch.where(frac < 0.5, a, b)
    return out[:, : frames * hop], torch.where(both, a + (b - a) * frac, nearer) * r


@torch.no_grad()
def random_pitch(wav: Tensor, f0: Tensor, mel: Tensor, frontend: MelFrontend) -> tuple[Tensor, Tensor, Tensor]:
    """A batch (wav (B, F * hop), its mel (B, n_mels, F) and F0 labels (B, F)) at one random pitch scale of
    PITCH_RATIOS (`scale_pitch`), its mel made anew; the training RNG picks the scale."""
    ratio = PITCH_RATIOS[int(torch.randint(len(PITCH_RATIOS), ()))]
    if ratio[0] == ratio[1]:
        return wav, f0, mel
    wav, f0 = scale_pitch(wav, f0, ratio, frontend.audio.hop_length)
    return wav, f0, frontend.to(wav.device)(wav)


def pitch_stage(preset: Preset, model: PitchPredictor | None = None) -> Stage:
    """The F0/voicing predictor on the corpus's labels, each batch at a random pitch scale (PITCH_RATIOS)."""
    frontend = MelFrontend(preset.audio)

    def loss(model: nn.Module, wav: Tensor, mel: Tensor, f0: Tensor) -> dict[str, Tensor]:
        wav, f0, mel = random_pitch(wav, f0, mel, frontend)
        module = model.module if hasattr(model, "module") else model
        return module.loss(mel, f0)

    @torch.no_grad()
    def validate(model: PitchPredictor, batch: Batch) -> dict[str, float]:
        _, mel, f0 = batch
        predicted, voicing = model.predict(mel)
        return {**pitch_agreement(predicted, voiced(voicing) > 0, f0), "loss": float(model.loss(mel, f0)["loss"])}

    return Stage("pitch", model if model is not None else PitchPredictor(preset.pitch), loss, validate,
                 lambda model, batch: None, pitch=True)


def teacher_stage(preset: Preset, teacher: Teacher | None = None) -> Stage:
    """Maximum likelihood: Gaussian (or MoL) NLL per sample on real audio; a pitch-driven teacher reads the
    corpus's F0 labels (voiced where F0 > 0) beside the mel."""
    model = teacher if teacher is not None else Teacher(preset.teacher, preset.audio)
    driven = model.pitch_driven

    def contour(f0: Tensor | None) -> dict[str, Tensor]:
        return {"f0": f0, "voicing": (f0 > 0).float()} if driven else {}

    def loss(model: nn.Module, wav: Tensor, mel: Tensor, *f0: Tensor) -> dict[str, Tensor]:
        value = nll(model(wav, mel, **contour(f0[0] if f0 else None)))
        return {"loss": value, "nll": value}

    @torch.no_grad()
    def validate(model: Teacher, batch: Batch) -> dict[str, float]:
        value = float(nll(model.log_prob(batch[0], batch[1], **contour(batch[2] if driven else None))))
        return {"nll_nats": value, "nll_bits": value * NATS_TO_BITS}

    def render(model: Teacher, batch: Batch) -> Tensor:
        frames = _render_frames(preset, preset.train.sample_seconds, batch[1].shape[-1])
        generator = torch.Generator(batch[1].device).manual_seed(RENDER_SEED)
        pitch = contour(batch[2][:1, :frames] if driven else None)
        return model.generate(batch[1][:1, :, :frames], generator=generator, **pitch)[0]

    return Stage("teacher", model, loss, validate, render, pitch=driven)


def distill_stage(preset: Preset, teacher: Teacher, student: Student | None = None,
                  pitch: PitchPredictor | None = None) -> Stage:
    """ClariNet distillation: closed-form KL(q || p) on the student's own samples, scored by the frozen
    teacher in one parallel pass (gradients flow through the teacher into the sample), the log-scale
    regulariser, and a multi-resolution STFT loss against the real audio of the same mel. With
    `distill.pitch_augment`, each batch is first resampled to a random pitch scale (`random_pitch`).

    A pitch-driven student runs on the corpus's F0 labels (voiced where F0 > 0) or, with
    `distill.f0_source: predictor`, on what inference gives it: the frozen `pitch` predictor's F0 and
    harmonic weight (`PitchPredictor.source`) read from the same mel."""
    cfg = preset.distill
    teacher = teacher.eval().requires_grad_(False)
    frontend = MelFrontend(preset.audio)
    if cfg.f0_source == "predictor":
        if pitch is None:
            raise ValueError("distill.f0_source is 'predictor': give the pitch predictor")
        pitch = pitch.eval().requires_grad_(False)

    def contour(mel: Tensor, f0: Tensor) -> tuple[Tensor, Tensor]:
        """The student's F0 and voicing (B, F) for a batch."""
        if cfg.f0_source == "labels":
            return f0, (f0 > 0).float()
        pitch.to(mel.device)
        return pitch.source(mel)

    def student_and_teacher(model: nn.Module, mel: Tensor, f0: Tensor, generator=None):
        f0, voicing = contour(mel, f0)
        x, mu_q, log_sigma_q = model(mel, generator=generator, f0=f0, voicing=voicing)
        if cfg.kl_weight == 0:  # STFT only: the teacher is not run
            return x, None
        pitch = {"f0": f0, "voicing": voicing} if teacher.pitch_driven else {}  # the student's own contour
        mu_p, log_sigma_p = teacher.gaussian(teacher.params(x, mel, **pitch))
        return x, (mu_q, log_sigma_q, mu_p, log_sigma_p + math.log(cfg.teacher_temperature))

    def loss(model: nn.Module, wav: Tensor, mel: Tensor, f0: Tensor) -> dict[str, Tensor]:
        teacher.to(mel.device)
        if cfg.pitch_augment:  # voices lower and higher than the corpus's (pitch and vocal tract together)
            wav, f0, mel = random_pitch(wav, f0, mel, frontend)
        x, gaussians = student_and_teacher(model, mel, f0)
        stft = stft_distance(x, wav, cfg.stft_ffts)
        terms = {"stft": stft}
        spectral = cfg.stft_weight * stft
        if cfg.mel_weight > 0:  # log-mel L1 against the conditioning mel itself
            terms["mel_l1"] = (frontend.to(x.device)(x) - mel).abs().mean()
            spectral = spectral + cfg.mel_weight * terms["mel_l1"]
        if gaussians is None:
            return {"loss": spectral, **terms}
        kl, reg = distillation_kl(*gaussians, clamp=cfg.log_scale_clamp, reg_weight=cfg.log_scale_reg)
        return {"loss": cfg.kl_weight * (kl + reg) + spectral, "kl": kl, "log_scale_reg": reg, **terms}

    @torch.no_grad()
    def validate(model: Student, batch: Batch) -> dict[str, float]:
        wav, mel, f0 = batch
        generator = torch.Generator(mel.device).manual_seed(RENDER_SEED)
        x, gaussians = student_and_teacher(model, mel, f0, generator)
        spectral = {"stft": float(stft_distance(x, wav, cfg.stft_ffts)),
                    "mel_l1": float((frontend(x) - mel).abs().mean())}
        # a WaveNet flow at activity 0 is dead: a constant map that no gradient reaches (`Student.restart_flow`)
        found = model.flow_activity(mel, *contour(mel, f0), torch.Generator(mel.device).manual_seed(RENDER_SEED))
        spectral.update({f"flow{k}_activity": activity for k, (activity, _) in enumerate(found)})
        if gaussians is None:
            return spectral
        kl, _ = distillation_kl(*gaussians, clamp=cfg.log_scale_clamp, reg_weight=0.0)
        return {"kl": float(kl), **spectral}

    @torch.no_grad()
    def render(model: Student, batch: Batch) -> Tensor:
        frames = _render_frames(preset, preset.distill_train.sample_seconds, batch[1].shape[-1])
        generator = torch.Generator(batch[1].device).manual_seed(RENDER_SEED)
        mel = batch[1][:1, :, :frames]
        f0, voicing = contour(mel, batch[2][:1, :frames])
        return model.sample(mel, generator=generator, f0=f0, voicing=voicing)[0][0]

    return Stage("student", student if student is not None else Student(preset.student, preset.audio), loss,
                 validate, render, pitch=True)
