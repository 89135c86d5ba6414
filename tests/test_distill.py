"""Density distillation's KL as the stage computes it: the closed form against the teacher, tempered on request."""

import dataclasses
import math

import pytest
import torch

from wavegen.losses import distillation_kl
from wavegen.models import Student, Teacher
from wavegen.stages import RENDER_SEED, distill_stage


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_stage_kl_is_the_closed_form_to_the_tempered_teacher(tiny, temperature):
    """validate()'s KL equals distillation_kl between the student's own Gaussians and the teacher's with sigma_p
    times the temperature, on the student's sample and contour (the teacher's pitch lag reads that sample)."""
    preset = dataclasses.replace(tiny, distill=dataclasses.replace(tiny.distill, teacher_temperature=temperature))
    torch.manual_seed(0)
    teacher, student = Teacher(tiny.teacher, tiny.audio), Student(tiny.student, tiny.audio)
    with torch.no_grad():  # a teacher that is not the identity: random head and lag weights
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stage = distill_stage(preset, teacher, student)
    frames = 4
    mel = torch.randn(1, tiny.audio.n_mels, frames) - 3
    f0 = torch.tensor([[0.0, 150.0, 160.0, 170.0]])
    wav = 0.1 * torch.randn(1, frames * tiny.audio.hop_length)
    kl = stage.validate(student.eval(), (wav, mel, f0))["kl"]
    with torch.no_grad():
        x, mu_q, log_sigma_q = student(mel, generator=torch.Generator().manual_seed(RENDER_SEED), f0=f0,
                                       voicing=(f0 > 0).float())
        mu_p, log_sigma_p = teacher.gaussian(teacher.params(x, mel, f0=f0, voicing=(f0 > 0).float()))
        expected, _ = distillation_kl(mu_q, log_sigma_q, mu_p, log_sigma_p + math.log(temperature),
                                      clamp=tiny.distill.log_scale_clamp, reg_weight=0.0)
        untempered, _ = distillation_kl(mu_q, log_sigma_q, mu_p, log_sigma_p, clamp=tiny.distill.log_scale_clamp,
                                        reg_weight=0.0)
    assert kl == pytest.approx(float(expected), rel=1e-5)
    assert (kl == pytest.approx(float(untempered), rel=1e-5)) == (temperature == 1.0)
