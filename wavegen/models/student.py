"""The Gaussian IAF student: q(x | mel), sampled in parallel.

z ~ N(0, I); flow k maps x^(k-1) to x^(k) = x^(k-1) * sigma_k + mu_k, where (mu_k, log sigma_k) at t
come from x^(k-1)_<t and the mel. Every flow is affine with parameters from the past, so the whole
stack is x = z * sigma_tot + mu_tot with sigma_tot = prod_k sigma_k and
mu_tot = sum_k mu_k prod_{j>k} sigma_j: q(x_t | z_<t) is Gaussian.

What costs what:
* `sample`: K parallel passes (one per flow) for the whole utterance; returns x and the
  per-sample Gaussian (mu_tot, log_sigma_tot), whose log-density is the flow's exact density of
  its own sample; `transform` does the same piece by piece with explicit caches (long inputs);
* `inverse` / `log_prob` of an arbitrary waveform: sequential, flow by flow from the last,
  sample by sample with the body's step cache.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor, nn

from wavegen.config import FlowConfig
from wavegen.distributions import gaussian_log_prob
from wavegen.nn import CausalWaveNet, MelUpsampler, full_precision, shift_right
from wavegen.nn import compiled as compiled_loop
from wavegen.nn.wavenet import Cache

FlowCache = list[tuple[Tensor, Cache]]  # per flow: its last input (B, 1) and its body's cache


class Body(Protocol):
    """A flow's network: `CausalWaveNet` itself, or an inference copy (`wavegen.nn.packed.PackedBody`)."""

    def __call__(self, x: Tensor, cond: Tensor) -> Tensor: ...

    def stream(self, x: Tensor, cond: Tensor, cache: Cache) -> tuple[Tensor, Cache]: ...


class Student(nn.Module):
    """K mel-conditioned Gaussian IAF flows sharing one mel upsampler."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.upsampler = MelUpsampler(cfg.n_mels, cfg.upsample_scales)
        self.flows = nn.ModuleList(
            CausalWaveNet(cfg.flow(k), in_channels=1, out_channels=2, zero_init_output=True)
            for k in range(cfg.n_flows)
        )

    def _affine(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, ...) -> mu, log_sigma (B, ...), log_sigma clamped below for stability."""
        mu, log_sigma = params.unbind(dim=1)
        return mu, torch.clamp(log_sigma, min=self.cfg.log_scale_min)

    def sample(self, mel: Tensor, z: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """mel (B, n_mels, F) -> x, mu_tot, log_sigma_tot, each (B, F * hop). K parallel passes.

        z (B, F * hop) defaults to temperature * N(0, I). x = z * exp(log_sigma_tot) + mu_tot exactly.
        """
        cond = self.upsampler(mel)  # (B, n_mels, T)
        if z is None:
            z = temperature * torch.randn(cond.shape[0], cond.shape[2], generator=generator,
                                          device=cond.device, dtype=cond.dtype)
        return self.transform(z, cond)[:3]

    def init_cache(self, batch: int, device: torch.device | str = "cpu") -> FlowCache:
        """The state before the first sample: per flow, its last input (zero: the shift right) and its
        body's cache (`CausalWaveNet.init_cache`)."""
        return [(torch.zeros(batch, 1, device=device), flow.init_cache(batch, torch.device(device)))
                for flow in self.flows]

    def transform(self, z: Tensor, cond: Tensor, bodies: Sequence[Body] | None = None,
                  cache: FlowCache | None = None) -> tuple[Tensor, Tensor, Tensor, FlowCache | None]:
        """z (B, T), upsampled cond (B, n_mels, T) -> x, mu_tot, log_sigma_tot (B, T) and the cache after z.

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
        for k, body in enumerate(bodies or self.flows):
            if cache is None:
                params = body(shift_right(x.unsqueeze(1)), cond)
            else:
                previous, body_cache = cache[k]
                params, body_cache = body.stream(torch.cat([previous, x[:, :-1]], dim=1).unsqueeze(1), cond,
                                                 body_cache)
                new_cache.append((x[:, -1:], body_cache))
            mu, log_sigma = self._affine(full_precision(params))  # (B, T) each
            sigma = torch.exp(log_sigma)
            x = x * sigma + mu
            mu_tot = mu_tot * sigma + mu
            log_sigma_tot = log_sigma_tot + log_sigma
        return x, mu_tot, log_sigma_tot, new_cache

    def forward(self, mel: Tensor, z: Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """`sample`: what distillation calls (through DistributedDataParallel)."""
        return self.sample(mel, z, temperature, generator)

    @torch.no_grad()
    def invert(self, x: Tensor, mel: Tensor, compiled: bool = True) -> tuple[Tensor, Tensor]:
        """x (B, T) -> z (B, T) and the per-sample log|det dx/dz| = sum_k log sigma_k (B, T).

        Sequential: for each flow from the last, x^(k-1)_t = (x^(k)_t - mu_k,t) / sigma_k,t where
        mu_k,t depends on the already recovered x^(k-1)_<t; one cached body step per sample. On the
        CPU in float32 one compiled loop runs every flow (`wavegen.nn.compiled`), its stages pipelined
        over the cores; `compiled=False` forces PyTorch, flow after flow.
        """
        cond = self.upsampler(mel)
        if compiled and compiled_loop.available(self.flows, x):  # all flows in one loop, pipelined over cores
            loop = compiled_loop.CompiledLoop(list(reversed(self.flows)), self.cfg.log_scale_min)
            return loop.run_blocks(cond, x, compiled_loop.INVERT)
        log_det = torch.zeros_like(x)
        for flow in reversed(self.flows):
            x, log_sigma = self._invert_flow(flow, x, cond)
            log_det += log_sigma
        return x, log_det

    def _invert_flow(self, flow: CausalWaveNet, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """One flow's inverse with the PyTorch step: x^(k) (B, T) -> x^(k-1), log sigma_k (B, T)."""
        batch, length = x.shape
        cache = flow.init_cache(batch, x.device, x.dtype)
        previous, log_sigmas = torch.zeros_like(x), torch.zeros_like(x)
        prev_t = torch.zeros(batch, 1, device=x.device, dtype=x.dtype)
        for t in range(length):
            params, cache = flow.step(prev_t, cond[:, :, t], cache)  # (B, 2)
            mu, log_sigmas[:, t] = self._affine(params)  # (B,) each
            previous[:, t] = (x[:, t] - mu) * torch.exp(-log_sigmas[:, t])
            prev_t = previous[:, t : t + 1]
        return previous, log_sigmas

    def inverse(self, x: Tensor, mel: Tensor) -> Tensor:
        """x (B, T) -> z (B, T); sequential (see `invert`)."""
        return self.invert(x, mel)[0]

    def log_prob(self, x: Tensor, mel: Tensor) -> Tensor:
        """Exact per-sample log density (B, T) of any waveform x (B, T); sequential (see `invert`)."""
        z, log_det = self.invert(x, mel)
        return gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) - log_det
