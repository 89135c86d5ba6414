"""The two training stages injected into the one loop: teacher MLE and probability density distillation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wavegen.audio import MelFrontend
from wavegen.config import Preset
from wavegen.losses import NATS_TO_BITS, distillation_kl, multi_resolution_stft_loss, nll
from wavegen.models import Student, Teacher
from wavegen.train import Batch, Stage

RENDER_SEED = 0  # validation audio uses its own generator: the training RNG stream is untouched


def _render_frames(preset: Preset, seconds: float, available: int) -> int:
    return max(1, min(available, round(seconds * preset.audio.sample_rate / preset.audio.hop_length)))


def teacher_stage(preset: Preset, teacher: Teacher | None = None) -> Stage:
    """Maximum likelihood: Gaussian (or MoL) NLL per sample on real audio."""

    def loss(model: nn.Module, wav: Tensor, mel: Tensor) -> dict[str, Tensor]:
        value = nll(model(wav, mel))
        return {"loss": value, "nll": value}

    @torch.no_grad()
    def validate(model: Teacher, batch: Batch) -> dict[str, float]:
        value = float(nll(model.log_prob(*batch)))
        return {"nll_nats": value, "nll_bits": value * NATS_TO_BITS}

    def render(model: Teacher, batch: Batch) -> Tensor:
        frames = _render_frames(preset, preset.train.sample_seconds, batch[1].shape[-1])
        generator = torch.Generator(batch[1].device).manual_seed(RENDER_SEED)
        return model.generate(batch[1][:1, :, :frames], generator=generator)[0]

    return Stage("teacher", teacher if teacher is not None else Teacher(preset.teacher), loss, validate, render)


def distill_stage(preset: Preset, teacher: Teacher, student: Student | None = None) -> Stage:
    """ClariNet distillation: closed-form KL(q || p) on the student's own samples, scored by the frozen
    teacher in one parallel pass (gradients flow through the teacher into the sample), the log-scale
    regulariser, and a multi-resolution STFT loss against the real audio of the same mel."""
    cfg = preset.distill
    teacher = teacher.eval().requires_grad_(False)
    frontend = MelFrontend(preset.audio)

    def student_and_teacher(model: nn.Module, mel: Tensor, generator=None):
        x, mu_q, log_sigma_q = model(mel, generator=generator)
        mu_p, log_sigma_p = teacher.gaussian(teacher.params(x, mel))
        return x, mu_q, log_sigma_q, mu_p, log_sigma_p

    def loss(model: nn.Module, wav: Tensor, mel: Tensor) -> dict[str, Tensor]:
        teacher.to(mel.device)
        x, *gaussians = student_and_teacher(model, mel)
        kl, reg = distillation_kl(*gaussians, clamp=cfg.log_scale_clamp, reg_weight=cfg.log_scale_reg)
        stft = multi_resolution_stft_loss(x, wav, cfg.stft_ffts)
        total = cfg.kl_weight * (kl + reg) + cfg.stft_weight * stft
        return {"loss": total, "kl": kl, "log_scale_reg": reg, "stft": stft}

    @torch.no_grad()
    def validate(model: Student, batch: Batch) -> dict[str, float]:
        wav, mel = batch
        generator = torch.Generator(mel.device).manual_seed(RENDER_SEED)
        x, *gaussians = student_and_teacher(model, mel, generator)
        kl, _ = distillation_kl(*gaussians, clamp=cfg.log_scale_clamp, reg_weight=0.0)
        return {"kl": float(kl), "stft": float(multi_resolution_stft_loss(x, wav, cfg.stft_ffts)),
                "mel_l1": float((frontend(x) - mel).abs().mean())}

    @torch.no_grad()
    def render(model: Student, batch: Batch) -> Tensor:
        frames = _render_frames(preset, preset.distill_train.sample_seconds, batch[1].shape[-1])
        generator = torch.Generator(batch[1].device).manual_seed(RENDER_SEED)
        return model.sample(batch[1][:1, :, :frames], generator=generator)[0][0]

    return Stage("student", student if student is not None else Student(preset.student), loss, validate, render)
