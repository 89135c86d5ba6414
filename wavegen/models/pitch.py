"""F0 and voicing from the log-mel: the pitch the source and the student's first flow run on.

Mels from a TTS front end carry no F0, so the vocoder reads it from the mel itself. A small
non-causal network over frames classifies each frame's pitch into bins of `bin_cents` (as CREPE and
RMVPE do) and gives a voicing logit; F0 is read out as the probability-weighted mean of the bins
around the most likely one, so it is not quantised to the bins.

Input normalisation makes it level-invariant: the network sees each frame's mel minus its mean over
bands, and that mean (the loudness) as one more channel scaled down.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavegen.config import PitchConfig

READOUT_HALF_WIDTH = 4  # bins either side of the peak in the weighted read-out (CREPE)
TARGET_BLUR_CENTS = 25.0  # the Gaussian blur of the training targets (CREPE)
# A frame is voiced (the F0 a user sees, `Vocoder.pitch`) above this probability: the lowest voicing error
# against the labels on the held-out files (0.111, vs 0.120 at 0.35).
VOICED_THRESHOLD = 0.5
# The student's harmonic weight is probability / SOURCE_RAMP, at most 1: soft, and full well below 0.5. The
# labels (DIO) call 65 % of frames voiced where Harvest calls 89 % and pYIN 81 %: weak onsets, offsets and
# breathy vowels are periodic, and rendering them as noise is what the ear (and PESQ) punishes most.
SOURCE_RAMP = 0.2


def voiced(probability: Tensor) -> Tensor:
    """Voicing probability (B, F) -> voiced (1) or not (0): the contour `Vocoder.pitch` reports."""
    return (probability > VOICED_THRESHOLD).float()


def source_voicing(probability: Tensor) -> Tensor:
    """Voicing probability (B, F) -> the weight in [0, 1] of the harmonics in the student's source."""
    return (probability / SOURCE_RAMP).clamp(max=1.0)


class PitchPredictor(nn.Module):
    """log-mel (B, n_mels, F) -> pitch logits (B, n_bins, F) and voicing logit (B, F)."""

    def __init__(self, cfg: PitchConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv1d(cfg.n_mels + 1, cfg.channels, cfg.kernel_size,
                                             padding=cfg.kernel_size // 2)]
        self.input = layers[0]
        self.blocks = nn.ModuleList(
            nn.Conv1d(cfg.channels, cfg.channels, cfg.kernel_size, dilation=d,
                      padding=d * (cfg.kernel_size // 2))
            for d in cfg.dilations)
        self.output = nn.Conv1d(cfg.channels, cfg.n_bins + 1, 1)
        cents = cfg.bin_cents * torch.arange(cfg.n_bins, dtype=torch.float32)
        self.register_buffer("cents", cents, persistent=False)  # bin i: f0_min * 2 ** (cents_i / 1200)

    @property
    def context(self) -> int:
        """Frames of mel either side that one output frame sees."""
        half = self.cfg.kernel_size // 2
        return half + sum(d * half for d in self.cfg.dilations)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        level = mel.mean(dim=1, keepdim=True)  # (B, 1, F)
        h = F.leaky_relu(self.input(torch.cat([mel - level, level / 4.0], dim=1)), 0.1)
        for block in self.blocks:
            h = h + F.leaky_relu(block(h), 0.1)
        out = self.output(h)  # (B, n_bins + 1, F)
        return out[:, :-1], out[:, -1]

    def to_cents(self, f0: Tensor) -> Tensor:
        """Hz (> 0) -> cents above f0_min."""
        return 1200.0 * torch.log2(f0.clamp(min=1e-3) / self.cfg.f0_min)

    def readout(self, logits: Tensor) -> Tensor:
        """(B, n_bins, F) -> F0 (B, F) in Hz: the probability-weighted mean of the bins within
        READOUT_HALF_WIDTH of the most likely one."""
        probs = logits.softmax(dim=1)
        peak = probs.argmax(dim=1, keepdim=True)  # (B, 1, F)
        index = torch.arange(self.cfg.n_bins, device=logits.device).view(1, -1, 1)
        near = ((index - peak).abs() <= READOUT_HALF_WIDTH).to(probs.dtype)
        weights = probs * near
        cents = (weights * self.cents.view(1, -1, 1)).sum(1) / weights.sum(1).clamp(min=1e-12)
        return self.cfg.f0_min * torch.pow(2.0, cents / 1200.0)

    @torch.no_grad()
    def predict(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """log-mel (B, n_mels, F) -> F0 (B, F) in Hz (on every frame) and voicing probability (B, F)."""
        logits, voicing = self(mel)
        return self.readout(logits), torch.sigmoid(voicing)

    @torch.no_grad()
    def source(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """log-mel (B, n_mels, F) -> what a pitch-driven student runs on: F0 (B, F) in Hz and the harmonic
        weight (B, F) (`source_voicing`); training and inference both take it from here."""
        f0, probability = self.predict(mel)
        return f0, source_voicing(probability)

    def loss(self, mel: Tensor, f0: Tensor) -> dict[str, Tensor]:
        """Cross-entropy against Gaussian-blurred targets on voiced frames + voicing BCE; f0 (B, F), 0 where
        unvoiced."""
        logits, voicing = self(mel)
        voiced = f0 > 0
        target_cents = self.to_cents(f0).unsqueeze(1)  # (B, 1, F)
        target = torch.exp(-0.5 * ((self.cents.view(1, -1, 1) - target_cents) / TARGET_BLUR_CENTS) ** 2)
        target = target / target.sum(1, keepdim=True).clamp(min=1e-12)
        in_range = voiced & (f0 >= self.cfg.f0_min) & (f0 <= self.cfg.f0_max)
        ce = -(target * logits.log_softmax(dim=1)).sum(1)  # (B, F)
        pitch = (ce * in_range).sum() / in_range.sum().clamp(min=1)
        voicing_loss = F.binary_cross_entropy_with_logits(voicing, voiced.float())
        return {"loss": pitch + voicing_loss, "pitch_ce": pitch, "voicing_bce": voicing_loss}


def pitch_agreement(f0: Tensor, voiced: Tensor, ref_f0: Tensor) -> dict[str, float]:
    """Predicted F0 (Hz) and voicing (bool) against reference F0 (Hz, 0 unvoiced), all (..., F):
    voicing error (fraction of frames), and on frames voiced in both the median |error| in cents and
    the fraction of gross errors (> 50 cents)."""
    ref_voiced = ref_f0 > 0
    both = voiced & ref_voiced
    error = (1200.0 * torch.log2(f0[both] / ref_f0[both])).abs()
    return {"voicing_error": float((voiced != ref_voiced).float().mean()),
            "median_cents": float(error.median()) if error.numel() else math.nan,
            "gross_error": float((error > 50.0).float().mean()) if error.numel() else math.nan}
