"""The WaveNet teacher: p(x_t | x_<t, mel), MAF-like.

Scoring any waveform is one parallel pass (`log_prob`); generation is sequential, one network
step per sample, with the body's explicit cache (`generate`), or, for tests and the benchmark,
by recomputing the receptive field at every step (`generate_naive`).

With `cfg.source_harmonics` and/or `cfg.pitch_lag`, the teacher is pitch-driven: harmonics of an F0 contour
(B, F), the waveform one pitch period back and the voicing (B, F) enter its input path
(`wavegen.nn.pitch_input.PitchInput`), and every method takes `f0=` and `voicing=`. The lag reads only the past,
so the density stays exactly autoregressive; generation computes it span by span from the samples drawn.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from wavegen.config import AudioConfig, WaveNetConfig
from wavegen.distributions import gaussian_log_prob, mol_log_prob, mol_sample
from wavegen.nn import CausalWaveNet, MelUpsampler, full_precision, shift_right
from wavegen.nn import compiled as compiled_loop
from wavegen.nn.pitch_input import PitchInput, pitch_input_channels

Progress = Callable[[int, int], None]  # (samples done, total)


class Teacher(nn.Module):
    """Mel-conditioned autoregressive WaveNet with a Gaussian (default) or mixture-of-logistics head."""

    def __init__(self, cfg: WaveNetConfig, audio: AudioConfig | None = None):
        super().__init__()
        if cfg.pitch_driven and audio is None:
            raise ValueError("a pitch-driven teacher needs the mel convention (audio)")
        self.cfg, self.audio = cfg, audio
        out_channels = 2 if cfg.output == "gaussian" else 3 * cfg.n_mixtures
        self.upsampler = MelUpsampler(cfg.n_mels, cfg.upsample_scales, cfg.upsampler)
        self.body = CausalWaveNet(cfg, in_channels=1, out_channels=out_channels,
                                  source_channels=pitch_input_channels(cfg))

    @property
    def pitch_driven(self) -> bool:
        return self.body.source is not None

    def source(self, f0: Tensor | None, voicing: Tensor | None) -> PitchInput | None:
        """The source channels' maker from F0 (B, F) in Hz and voicing (B, F) in [0, 1] (`PitchInput(x, lo, hi)`
        gives samples [lo, hi) of a waveform x); None for a mel-only teacher (which takes neither)."""
        if not self.pitch_driven:
            if f0 is not None:
                raise ValueError("this teacher reads F0 from the mel alone: it takes no f0")
            return None
        if f0 is None or voicing is None:
            raise ValueError("this teacher is pitch-driven: it needs F0 and voicing per frame (f0=, voicing=)")
        return PitchInput(f0, voicing, self.cfg, self.audio)

    def params(self, x: Tensor, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        """x (B, T), mel (B, n_mels, F) with T = F * hop (and F0, voicing (B, F) for a pitch-driven teacher) ->
        head parameters (B, P, T); parameters at t depend on x_<t only. One parallel pass."""
        source = self.source(f0, voicing)
        # float32 head: the density needs it under bf16 autocast (log-scales reach -9)
        return full_precision(self.body(shift_right(x.unsqueeze(1)), self.upsampler(mel),
                                        None if source is None else source(x)))

    def gaussian(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, T) -> mu, log_sigma (B, T) each, log_sigma clamped below at cfg.log_scale_min."""
        mu, log_sigma = params.unbind(dim=1)
        return mu, torch.clamp(log_sigma, min=self.cfg.log_scale_min)

    def log_prob(self, x: Tensor, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        """Per-sample log density (B, T) of x (B, T) in [-1, 1] given mel (B, n_mels, F) (and F0, voicing); one
        pass."""
        params = self.params(x, mel, f0, voicing)
        if self.cfg.output == "gaussian":
            return gaussian_log_prob(x, *self.gaussian(params))
        return mol_log_prob(x, params, self.cfg.log_scale_min)

    def forward(self, x: Tensor, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        """`log_prob`: what training calls (through DistributedDataParallel)."""
        return self.log_prob(x, mel, f0, voicing)

    def noise(self, batch: int, length: int, like: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """The Gaussian head's eps (B, T), drawn at once so that every generator uses the same numbers;
        None for the mixture head (it draws per step)."""
        if self.cfg.output == "mol":
            return None
        return torch.randn(batch, length, generator=generator, device=like.device, dtype=like.dtype)

    def sample_from(self, params: Tensor, temperature: float, generator: torch.Generator | None,
                    eps: Tensor | None) -> Tensor:
        """(B, P, T) head parameters and eps (B, T) from `noise` -> (B, T) samples clipped to [-1, 1]."""
        if self.cfg.output == "mol":
            return mol_sample(params, self.cfg.log_scale_min, temperature, generator)
        mu, log_sigma = self.gaussian(params)
        return (mu + temperature * torch.exp(log_sigma) * eps).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def generate(self, mel: Tensor, temperature: float = 1.0, progress: Progress | None = None,
                 generator: torch.Generator | None = None, compiled: bool = True, f0: Tensor | None = None,
                 voicing: Tensor | None = None) -> Tensor:
        """Sequential sampling, batched: mel (B, n_mels, F) (and F0, voicing (B, F)) -> x (B, F * hop).

        One body step per sample with the explicit Fast-WaveNet cache: O(layers) per sample. On the
        CPU the loop runs compiled (`wavegen.nn.compiled`; a source enters it span by span); `compiled=False`
        forces the PyTorch step.
        """
        cond = self.upsampler(mel)  # (B, n_mels, T)
        source = self.source(f0, voicing)
        batch, _, length = cond.shape
        eps = self.noise(batch, length, cond, generator)
        if compiled and eps is not None and compiled_loop.available(self.body, cond):
            loop = compiled_loop.CompiledLoop(self.body, self.cfg.log_scale_min)
            return loop.run_blocks(cond, eps, compiled_loop.GENERATE, temperature, progress, source)[0]
        cache = self.body.init_cache(batch, cond.device, cond.dtype)
        x = torch.zeros(batch, length, device=cond.device, dtype=cond.dtype)
        x_prev = torch.zeros(batch, 1, device=cond.device, dtype=cond.dtype)
        for t in range(length):
            params, cache = self.body.step(x_prev, cond[:, :, t], cache,
                                           None if source is None else source(x, t, t + 1)[..., 0])  # (B, P)
            x_prev = self.sample_from(params.unsqueeze(-1), temperature, generator,
                                      None if eps is None else eps[:, t:t + 1])  # (B, 1)
            x[:, t] = x_prev[:, 0]
            if progress is not None and (t % 2000 == 0 or t == length - 1):
                progress(t + 1, length)
        return x

    @torch.inference_mode()
    def generate_naive(self, mel: Tensor, temperature: float = 1.0, length: int | None = None,
                       generator: torch.Generator | None = None, f0: Tensor | None = None,
                       voicing: Tensor | None = None) -> Tensor:
        """Reference sampler: recompute the whole receptive field at every step (O(R) per sample).

        Draws the same random numbers in the same order as `generate`, so both agree for one seed.
        `length` limits the number of samples (the benchmark times a short slice).
        """
        cond = self.upsampler(mel)
        source = self.source(f0, voicing)
        batch, _, total = cond.shape
        length = total if length is None else min(length, total)
        field = self.cfg.receptive_field
        eps = self.noise(batch, total, cond, generator)
        x = torch.zeros(batch, length, device=cond.device, dtype=cond.dtype)
        for t in range(length):
            lo = max(0, t + 1 - field)
            inputs = shift_right(x[:, None, : t + 1])[..., lo:]  # (B, 1, <= R)
            params = self.body(inputs, cond[:, :, lo : t + 1],
                               None if source is None else source(x, lo, t + 1))[..., -1:]  # (B, P, 1)
            x[:, t] = self.sample_from(params, temperature, generator, None if eps is None else eps[:, t:t + 1])[:, 0]
        return x
