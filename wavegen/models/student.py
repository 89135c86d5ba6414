"""The Gaussian IAF student: q(x | mel), sampled in parallel.

z ~ N(0, I); flow k maps x^(k-1) to x^(k) = x^(k-1) * sigma_k + mu_k, where (mu_k, log sigma_k) at t
come from x^(k-1)_<t and the mel. Every flow is affine with parameters from the past, so the whole
stack is x = z * sigma_tot + mu_tot with sigma_tot = prod_k sigma_k and
mu_tot = sum_k mu_k prod_{j>k} sigma_j: q(x_t | z_<t) is Gaussian.

With `cfg.harmonic_noise`, flow 0 is `wavegen.nn.source.HarmonicNoise`: harmonics of the F0 with
amplitudes from the mel's envelope plus z through an envelope-shaped causal filter, all parameters from
the conditioning (mel, F0, voicing), so the stack stays x = z * sigma_tot + mu_tot. Its parameters per
frame come from `source_params`; the WaveNet flows then refine the waveform (a student may have none: flow 0
alone is an affine autoregressive flow, its shift reading z_<t through the noise filter). With
`cfg.flow_source` = n, each WaveNet flow also reads sin(k phi_t), cos(k phi_t) for k = 1..n on flow 0's phase as input beside x
(`HarmonicNoise.channels`: conditioning, known at t), through its own 1x1 convolution, zero at initialisation.

What costs what:
* `sample`: K parallel passes (one per flow) for the whole utterance; returns x and the
  per-sample Gaussian (mu_tot, log_sigma_tot), whose log-density is the flow's exact density of
  its own sample; `transform` does the same piece by piece with explicit caches (long inputs);
* `inverse` / `log_prob` of an arbitrary waveform: sequential, flow by flow from the last,
  sample by sample with the body's step cache.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
from torch import Tensor, nn

from wavegen.config import AudioConfig, FlowConfig
from wavegen.distributions import gaussian_log_prob
from wavegen.nn import CausalWaveNet, MelUpsampler, full_precision, shift_right
from wavegen.nn import compiled as compiled_loop
from wavegen.nn.source import HarmonicNoise, SourceState
from wavegen.nn.wavenet import Cache

# per WaveNet flow: its last input (B, 1) and its body's cache; with a harmonic flow 0, its state comes first
FlowCache = list[tuple[Tensor, Cache] | SourceState]
SourceParams = tuple[Tensor, Tensor, Tensor]  # `HarmonicNoise.frame_params`: amplitudes, taps, F0 per frame


class Body(Protocol):
    """A flow's network: `CausalWaveNet` itself, or an inference copy (`wavegen.nn.packed.PackedBody`)."""

    def __call__(self, x: Tensor, cond: Tensor, source: Tensor | None = None) -> Tensor: ...

    def stream(self, x: Tensor, cond: Tensor, cache: Cache, source: Tensor | None = None) -> tuple[Tensor, Cache]: ...


class Student(nn.Module):
    """K mel-conditioned Gaussian IAF flows sharing one mel upsampler (after a harmonic flow 0 if configured).

    K may be 0 beside a harmonic flow 0: then nothing reads the mel per sample and there is no upsampler."""

    def __init__(self, cfg: FlowConfig, audio: AudioConfig | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.harmonic_noise and audio is None:
            raise ValueError("a student with a harmonic-plus-noise flow needs the mel convention (audio)")
        self.source = HarmonicNoise(cfg, audio) if cfg.harmonic_noise else None
        self.hop = math.prod(cfg.upsample_scales)  # samples per mel frame
        self.upsampler = MelUpsampler(cfg.n_mels, cfg.upsample_scales, cfg.upsampler) if cfg.n_flows else None
        self.flows = nn.ModuleList(self.new_flow(k) for k in range(cfg.n_flows))

    def new_flow(self, k: int) -> CausalWaveNet:
        """A freshly initialised WaveNet flow k (output layer zero: the identity transform)."""
        return CausalWaveNet(self.cfg.flow(k), in_channels=1, out_channels=2, zero_init_output=True,
                             source_channels=2 * self.cfg.flow_source)

    @torch.no_grad()
    def flow_activity(self, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None,
                      generator: torch.Generator | None = None) -> list[tuple[float, Tensor]]:
        """Per WaveNet flow, on the input it gets when the student samples from mel (B, n_mels, F) (and F0,
        voicing (B, F) for a harmonic flow 0): its `CausalWaveNet.activity` and its mean output (2,). A flow
        with activity 0 is a constant affine map: that mean is the shift and log-scale it always outputs."""
        if not self.flows:  # flow 0 alone: nothing to measure (distillation asks at every validation)
            return []
        cond = self.condition(mel)
        z = torch.randn(mel.shape[0], mel.shape[-1] * self.hop, generator=generator, device=mel.device)
        x, found = z, []
        params = self.source_params(mel, f0, voicing)
        if params is not None:
            x = self.source.excite(z, params, self.source.init_state(z.shape[0], z.device))[0]
        for flow in self.flows:
            inputs = shift_right(x.unsqueeze(1))
            channels = None if not self.cfg.flow_source else self.source.channels(params, x.shape[-1], None,
                                                                                  self.cfg.flow_source)
            activity, output = flow.activity(inputs, cond, channels)  # output (B, 2, T)
            found.append((activity, output.mean(dim=(0, 2))))
            mu, log_sigma = self._affine(output)
            x = x * torch.exp(log_sigma) + mu
        return found

    @torch.no_grad()
    def restart_flow(self, k: int, output: Tensor) -> None:
        """WaveNet flow k re-initialised (`new_flow`, from the global RNG) with `output` (2,) as its output bias.
        For a dead flow, with the constant it outputs (`flow_activity`), the student's transform is unchanged
        while every weight of the flow gets gradients again."""
        fresh = self.new_flow(k).to(output.device)
        fresh.head[-1].bias.copy_(output)
        self.flows[k].load_state_dict(fresh.state_dict())

    def condition(self, mel: Tensor) -> Tensor | None:
        """mel (B, n_mels, F) -> what the WaveNet flows read per sample (B, n_mels, F * hop); None without them."""
        return None if self.upsampler is None else self.upsampler(mel)

    def _affine(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, ...) -> mu, log_sigma (B, ...), log_sigma clamped below for stability."""
        mu, log_sigma = params.unbind(dim=1)
        return mu, torch.clamp(log_sigma, min=self.cfg.log_scale_min)

    def source_params(self, mel: Tensor, f0: Tensor | None, voicing: Tensor | None,
                      retuned: bool = False) -> SourceParams | None:
        """Flow 0's per-frame parameters (F + 1 frames) from mel (B, n_mels, F), F0 (B, F) in Hz and voicing
        (B, F) in [0, 1]; `retuned` when the F0 is not the mel's own (`HarmonicNoise.frame_params`); None for a
        student without a harmonic flow."""
        if self.source is None:
            return None
        if f0 is None or voicing is None:
            raise ValueError("this student's harmonic flow needs F0 and voicing per frame (f0=, voicing=)")
        return self.source.frame_params(mel, f0, voicing, retuned)

    def sample(self, mel: Tensor, z: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, f0: Tensor | None = None,
               voicing: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """mel (B, n_mels, F) -> x, mu_tot, log_sigma_tot, each (B, F * hop). K parallel passes.

        z (B, F * hop) defaults to temperature * N(0, I). x = z * exp(log_sigma_tot) + mu_tot exactly.
        f0 (B, F) in Hz and voicing (B, F) in [0, 1] drive the harmonic flow 0 (if the student has one).
        """
        cond = self.condition(mel)  # (B, n_mels, T) or None
        if z is None:
            z = temperature * torch.randn(mel.shape[0], mel.shape[-1] * self.hop, generator=generator,
                                          device=mel.device, dtype=mel.dtype)
        params = self.source_params(mel, f0, voicing)
        cache = None if params is None else self.init_cache(z.shape[0], z.device)
        return self.transform(z, cond, cache=cache, source=params)[:3]

    def init_cache(self, batch: int, device: torch.device | str = "cpu") -> FlowCache:
        """The state before the first sample: flow 0's `SourceState` (if any), then per WaveNet flow its
        last input (zero: the shift right) and its body's cache (`CausalWaveNet.init_cache`)."""
        flows = [(torch.zeros(batch, 1, device=device), flow.init_cache(batch, torch.device(device)))
                 for flow in self.flows]
        return flows if self.source is None else [self.source.init_state(batch, device), *flows]

    def transform(self, z: Tensor, cond: Tensor | None, bodies: Sequence[Body] | None = None,
                  cache: FlowCache | None = None, source: SourceParams | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, FlowCache | None]:
        """z (B, T), upsampled cond (B, n_mels, T; None without WaveNet flows) -> x, mu_tot, log_sigma_tot
        (B, T) and the cache after z.

        `source`: flow 0's frame parameters for z's frames and the next (`source_params`, sliced); a
        student with a harmonic flow needs them and a cache (its phase and filter history live there).

        `bodies` replace the flows (e.g. the bf16 inference copies of `wavegen.nn.packed`, which may
        take other conditioning: `Vocoder.student_path`); by default the flows themselves run.

        With `cache` (from `init_cache`, then from the previous call), consecutive pieces of z give
        exactly what one call on the whole would: each flow sees its own past through the cache (the
        bodies' `stream`). Without it, z is the start of the sequence and no cache is made.
        """
        x = z
        mu_tot = torch.zeros_like(z)
        log_sigma_tot = torch.zeros_like(z)
        new_cache = None if cache is None else []
        channels = None  # the WaveNet flows' source input (B, 2 n, T), if they take one
        if self.source is not None:
            if cache is None or source is None:
                raise ValueError("a harmonic flow 0 needs its frame parameters (source=) and a cache")
            if self.cfg.flow_source:
                channels = self.source.channels(source, z.shape[-1], cache[0].phase, self.cfg.flow_source)
            x, log_sigma_tot, state = self.source.excite(z, source, cache[0])
            mu_tot = x - z * torch.exp(log_sigma_tot)
            new_cache.append(state)
            cache = cache[1:]
        for k, body in enumerate(bodies or self.flows):
            if cache is None:
                params = body(shift_right(x.unsqueeze(1)), cond, channels)
            else:
                previous, body_cache = cache[k]
                params, body_cache = body.stream(torch.cat([previous, x[:, :-1]], dim=1).unsqueeze(1), cond,
                                                 body_cache, channels)
                new_cache.append((x[:, -1:], body_cache))
            mu, log_sigma = self._affine(full_precision(params))  # (B, T) each
            sigma = torch.exp(log_sigma)
            x = x * sigma + mu
            mu_tot = mu_tot * sigma + mu
            log_sigma_tot = log_sigma_tot + log_sigma
        return x, mu_tot, log_sigma_tot, new_cache

    def forward(self, mel: Tensor, z: Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None, f0: Tensor | None = None,
                voicing: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """`sample`: what distillation calls (through DistributedDataParallel)."""
        return self.sample(mel, z, temperature, generator, f0, voicing)

    @torch.no_grad()
    def invert(self, x: Tensor, mel: Tensor, compiled: bool = True, f0: Tensor | None = None,
               voicing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T) -> z (B, T) and the per-sample log|det dx/dz| = sum_k log sigma_k (B, T).

        Sequential: for each flow from the last, x^(k-1)_t = (x^(k)_t - mu_k,t) / sigma_k,t where
        mu_k,t depends on the already recovered x^(k-1)_<t; one cached body step per sample. On the
        CPU in float32 one compiled loop runs every flow (`wavegen.nn.compiled`), its stages pipelined
        over the cores; `compiled=False` (and flows that read a source) run PyTorch, flow after flow. A harmonic
        flow 0 is inverted last
        (`HarmonicNoise.invert`, compiled), from f0 and voicing (B, F).
        """
        cond = self.condition(mel)
        params = self.source_params(mel, f0, voicing)
        channels = None if not self.cfg.flow_source else self.source.channels(params, x.shape[-1], None,
                                                                              self.cfg.flow_source)
        if compiled and self.flows and channels is None and compiled_loop.available(self.flows, x):  # pipelined
            loop = compiled_loop.CompiledLoop(list(reversed(self.flows)), self.cfg.log_scale_min)
            x, log_det = loop.run_blocks(cond, x, compiled_loop.INVERT)
        else:
            log_det = torch.zeros_like(x)
            for flow in reversed(self.flows):
                x, log_sigma = self._invert_flow(flow, x, cond, channels)
                log_det += log_sigma
        if params is not None:
            x, log_sigma = self.source.invert(x, params)
            log_det = log_det + log_sigma
        return x, log_det

    def _invert_flow(self, flow: CausalWaveNet, x: Tensor, cond: Tensor, channels: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
        """One flow's inverse with the PyTorch step: x^(k) (B, T) and its source input (B, S, T) if it takes
        one -> x^(k-1), log sigma_k (B, T)."""
        batch, length = x.shape
        cache = flow.init_cache(batch, x.device, x.dtype)
        previous, log_sigmas = torch.zeros_like(x), torch.zeros_like(x)
        prev_t = torch.zeros(batch, 1, device=x.device, dtype=x.dtype)
        for t in range(length):
            params, cache = flow.step(prev_t, cond[:, :, t], cache, None if channels is None else channels[:, :, t])
            mu, log_sigmas[:, t] = self._affine(params)  # (B,) each
            previous[:, t] = (x[:, t] - mu) * torch.exp(-log_sigmas[:, t])
            prev_t = previous[:, t : t + 1]
        return previous, log_sigmas

    def inverse(self, x: Tensor, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        """x (B, T) -> z (B, T); sequential (see `invert`)."""
        return self.invert(x, mel, f0=f0, voicing=voicing)[0]

    def log_prob(self, x: Tensor, mel: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        """Exact per-sample log density (B, T) of any waveform x (B, T); sequential (see `invert`)."""
        z, log_det = self.invert(x, mel, f0=f0, voicing=voicing)
        return gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) - log_det
