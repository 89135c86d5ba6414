"""The causal WaveNet body shared by the teacher and every student flow.

Three ways to run one network, sharing the layer code and one cache format:

* `forward(x, c)`: a whole sequence at once (teacher-forced training, scoring, IAF sampling);
* `stream(x, c, cache)`: the next stretch of a sequence, its past given by the cache (long inputs in
  pieces, exactly as one whole pass);
* `step(x_t, c_t, cache)`: one sample, with an explicit per-layer queue of past inputs
  (Fast WaveNet): O(layers) work per sample instead of O(receptive field).

The cache holds, for each layer, the last (k - 1) d inputs of its dilated convolution (zeros before t = 0).

Output t depends on input <= t only; the teacher and the flows shift their input right by one so
that their parameters at t depend on < t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavegen.config import WaveNetConfig
from wavegen.nn.source import Knots

Cache = list[Tensor]  # one (B, C_layer, (k - 1) * d) queue of past inputs per causal conv


def check_source(takes: bool, source: Tensor | None) -> None:
    """A ValueError unless a source signal is given exactly when the network (or its inference copy) `takes` one."""
    if (source is None) == takes:
        raise ValueError("this network takes a source signal" if takes else "this network has no source input")


class CausalConv1d(nn.Conv1d):
    """A dilated convolution that sees only the present and the past.

    `forward(x)` left-pads the whole sequence; `step(x_t, queue)` convolves the queue of the last
    (k - 1) * d inputs with the new one. Both use the same weight, so they agree exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.context = (kernel_size - 1) * dilation

    def forward(self, x: Tensor, queue: Tensor | None = None) -> Tensor:
        """(B, C_in, T) -> (B, C_out, T); queue (B, C_in, context): the inputs before x (None: zeros)."""
        return super().forward(F.pad(x, (self.context, 0)) if queue is None else torch.cat([queue, x], dim=-1))

    def step(self, x_t: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
        """x_t (B, C_in), queue (B, C_in, context) -> y_t (B, C_out), updated queue."""
        window = torch.cat([queue, x_t.unsqueeze(-1)], dim=-1)  # (B, C_in, context + 1)
        taps = window[..., :: self.dilation[0]]  # (B, C_in, k)
        y_t = torch.einsum("bik,oik->bo", taps, self.weight) + self.bias
        return y_t, window[..., 1:]

    def empty_queue(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The queue before the first sample: zeros, as the left padding of `forward`."""
        return torch.zeros(batch, self.in_channels, self.context, device=device, dtype=dtype)


class ResidualBlock(nn.Module):
    """Dilated causal conv -> tanh * sigmoid gate (+ conditioning) -> residual and skip 1x1s."""

    def __init__(self, cfg: WaveNetConfig, dilation: int, cond_channels: int, last: bool = False):
        super().__init__()
        self.conv = CausalConv1d(cfg.residual_channels, 2 * cfg.gate_channels, cfg.kernel_size, dilation)
        self.cond = nn.Conv1d(cond_channels, 2 * cfg.gate_channels, 1, bias=False)
        # the last block's residual output feeds nothing: it has no residual conv (DDP needs every
        # parameter to receive a gradient)
        self.residual = None if last else nn.Conv1d(cfg.gate_channels, cfg.residual_channels, 1)
        self.skip = nn.Conv1d(cfg.gate_channels, cfg.skip_channels, 1)

    def _gate(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, R, T), conv output h (B, 2G, T), conditioning c (B, n_mels, T) -> residual out, skip."""
        a, b = (h + self.cond(c)).chunk(2, dim=1)  # (B, G, T) each
        z = torch.tanh(a) * torch.sigmoid(b)
        out = x if self.residual is None else (x + self.residual(z)) * math.sqrt(0.5)
        return out, self.skip(z)

    def forward(self, x: Tensor, c: Tensor, queue: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, R, T), c (B, n_mels, T), queue (B, R, (k - 1) d) or None -> residual out, skip."""
        return self._gate(x, self.conv(x, queue), c)

    def gemm_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The block as float32 matrices for time-major inference (rows are time steps):
        taps (k R, 2G) with row j R + i for tap j (oldest first) and channel i, cond (n_mels, 2G),
        conv bias (2G,), residual and skip 1x1s side by side (G, R + S) with their bias (R + S,);
        the last block's residual part is zeros (it has none)."""
        conv = _constant(self.conv.weight)  # (2G, R, k)
        taps = conv.permute(2, 1, 0).reshape(-1, conv.shape[0])
        skip_w, skip_b = _constant(self.skip.weight[:, :, 0]), _constant(self.skip.bias)
        residual = conv.shape[1]
        res_w = _constant(self.residual.weight[:, :, 0]) if self.residual is not None else skip_w.new_zeros(
            residual, skip_w.shape[1])
        res_b = _constant(self.residual.bias) if self.residual is not None else skip_b.new_zeros(residual)
        return (taps, _constant(self.cond.weight[:, :, 0]).T, _constant(self.conv.bias),
                torch.cat([res_w, skip_w]).T, torch.cat([res_b, skip_b]))

    def step(self, x_t: Tensor, c_t: Tensor, queue: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_t (B, R), c_t (B, n_mels) -> residual out (B, R), skip (B, S), queue."""
        h_t, queue = self.conv.step(x_t, queue)
        out, skip = self._gate(x_t.unsqueeze(-1), h_t.unsqueeze(-1), c_t.unsqueeze(-1))
        return out.squeeze(-1), skip.squeeze(-1), queue


class CausalWaveNet(nn.Module):
    """(B, C_in, T) input and (B, cond, T) conditioning -> (B, C_out, T); output t sees input <= t.

    With `source_channels`, a (B, S, T) source signal (e.g. `wavegen.nn.source.source_channels`: harmonics of
    F0) enters the input path beside x through its own 1x1 convolution, zero at initialisation (so weights
    trained without it start unchanged); sample t sees the source at t (it is conditioning, known ahead)."""

    def __init__(self, cfg: WaveNetConfig, in_channels: int, out_channels: int, zero_init_output: bool = False,
                 source_channels: int = 0):
        super().__init__()
        self.cfg = cfg
        self.input = nn.Conv1d(in_channels, cfg.residual_channels, 1)
        self.source = nn.Conv1d(source_channels, cfg.residual_channels, 1, bias=False) if source_channels else None
        if self.source is not None:
            nn.init.zeros_(self.source.weight)
        self.blocks = nn.ModuleList(ResidualBlock(cfg, d, cfg.n_mels, last=i == cfg.layers - 1)
                                    for i, d in enumerate(cfg.dilations))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1),
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, out_channels, 1),
        )
        if zero_init_output:  # start as the identity transform in a flow
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, c: Tensor, source: Tensor | None = None) -> Tensor:
        return self.stream(x, c, None, source)[0]

    def _input(self, x: Tensor, source: Tensor | None) -> Tensor:
        """(B, C_in, T) and the source (B, S, T) -> the residual stream's start (B, R, T)."""
        check_source(self.source is not None, source)
        return self.input(x) if source is None else self.input(x) + self.source(source)

    def stream(self, x: Tensor, c: Tensor, cache: Cache | None, source: Tensor | None = None
               ) -> tuple[Tensor, Cache | None]:
        """x (B, C_in, T), c (B, cond, T) and the source (B, S, T) if the network takes one, after the samples
        `cache` holds (None: the start, and no new cache is made) -> (B, C_out, T) and the cache after x."""
        h = self._input(x, source)  # (B, R, T)
        skips = 0.0
        new_cache = None if cache is None else []
        for i, block in enumerate(self.blocks):
            queue = None if cache is None else cache[i]
            if new_cache is not None:  # the last `context` inputs: from h alone unless x is shorter
                context, length = block.conv.context, h.shape[-1]
                new_cache.append(h[..., -context:] if length >= context else torch.cat([queue[..., length:], h], -1))
            h, s = block(h, c, queue)
            skips = skips + s
        return self.head(skips * math.sqrt(1.0 / len(self.blocks))), new_cache

    @torch.no_grad()
    def activity(self, x: Tensor, c: Tensor, source: Tensor | None = None) -> tuple[float, Tensor]:
        """How alive the network is on x (B, C_in, T) and c (B, cond, T), and its output there (B, C_out, T), from
        one pass. The first is the smaller of the fractions of its
        head's units that are positive at the head's first ReLU (the skip sum) and at its second. At 0 it is
        dead there: if no skip unit is positive, the output is a function of the head's biases; if no hidden
        unit is, it is the last bias. Either way it is a constant, whatever x and c are, and no gradient
        reaches the weights before that ReLU (a ReLU at 0 passes none), so training cannot revive them."""
        h = self._input(x, source)
        skips = 0.0
        for block in self.blocks:
            h, s = block(h, c, None)
            skips = skips + s
        first = self.head[0](skips * math.sqrt(1.0 / len(self.blocks)))
        second = self.head[1:3](first)
        return min((first > 0).float().mean().item(), (second > 0).float().mean().item()), self.head[3](second)

    def head_weights(self) -> list[tuple[Tensor, Tensor]]:
        """The head's two 1x1 convolutions as float32 (in, out) matrices and biases (time-major)."""
        return [(_constant(conv.weight[:, :, 0]).T, _constant(conv.bias)) for conv in (self.head[1], self.head[3])]

    def init_cache(self, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Cache:
        return [block.conv.empty_queue(batch, device, dtype) for block in self.blocks]

    def step(self, x_t: Tensor, c_t: Tensor, cache: Cache, source_t: Tensor | None = None) -> tuple[Tensor, Cache]:
        """One sample: x_t (B, C_in), c_t (B, cond), source_t (B, S) if any -> y_t (B, C_out), the new cache."""
        h = self._input(x_t.unsqueeze(-1), None if source_t is None else source_t.unsqueeze(-1)).squeeze(-1)  # (B, R)
        skips = 0.0
        new_cache = []
        for block, queue in zip(self.blocks, cache):
            h, s, queue = block.step(h, c_t, queue)
            skips = skips + s
            new_cache.append(queue)
        y = self.head((skips * math.sqrt(1.0 / len(self.blocks))).unsqueeze(-1))
        return y.squeeze(-1), new_cache


class MelUpsampler(nn.Module):
    """(B, n_mels, F) frames -> (B, n_mels, F * hop) one conditioning vector per sample.

    mode "interpolate": a kernel-3 convolution over frames and a leaky ReLU, then linear interpolation to
    the samples (frame f at sample f * hop), then a 1x1 conv. Sample t of frame f sees frames f - 1 .. f + 2.
    mode "transposed" (the first models): transposed convolutions with strides `scales` (their product is
    hop_length), kernel 2 * s, each followed by a leaky ReLU, then a 1x1 conv; measured, their strides
    imprint a fixed comb at the hop rate that a spectrally trained student copies.
    The output is cut to exactly F * hop samples.
    """

    def __init__(self, n_mels: int, scales: tuple[int, ...], mode: str = "transposed"):
        super().__init__()
        self.mode, self.hop = mode, math.prod(scales)
        layers: list[nn.Module] = []
        if mode == "interpolate":
            layers += [nn.Conv1d(n_mels, n_mels, 3, padding=1), nn.LeakyReLU(0.4)]
        else:
            for s in scales:
                layers += [nn.ConvTranspose1d(n_mels, n_mels, 2 * s, stride=s, padding=s // 2), nn.LeakyReLU(0.4)]
        self.net = nn.Sequential(*layers, nn.Conv1d(n_mels, n_mels, 1))

    def forward(self, mel: Tensor) -> Tensor:
        return self.net[-1](self.features(mel))

    def features(self, mel: Tensor) -> Tensor:
        """(B, n_mels, F) -> (B, n_mels, F * hop) before the final 1x1 conv, for inference copies that
        fold it into their own conditioning weights (`projection`)."""
        if self.mode == "interpolate":
            return self.knots(mel).samples()
        return self.net[:-1](mel)[..., : mel.shape[-1] * self.hop]

    def knots(self, mel: Tensor) -> Knots:
        """(B, n_mels, F) -> `features` at frame rate: (B, n_mels, F + 1) knots, the last frame held (mode
        "interpolate" only: what consumers that project per frame and interpolate after take)."""
        if self.mode != "interpolate":
            raise ValueError("only the interpolating upsampler has frame-rate features")
        frames = self.net[:-1](mel)
        return Knots(torch.cat([frames, frames[..., -1:]], dim=-1), self.hop)

    def projection(self) -> tuple[Tensor, Tensor]:
        """The final 1x1 conv as float32 (in, out) matrix and bias: forward = features @ matrix + bias."""
        conv = self.net[-1]
        return _constant(conv.weight[:, :, 0]).T, _constant(conv.bias)


def _constant(weight: Tensor) -> Tensor:
    """A float32 copy of a weight, outside autograd, for the inference packings."""
    return weight.detach().float().clone()


def full_precision(x: Tensor) -> Tensor:
    """Half-precision (autocast) outputs to float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def shift_right(x: Tensor) -> Tensor:
    """(B, C, T) -> (B, C, T) delayed by one sample (zero first), so output t depends on < t."""
    return F.pad(x, (1, 0))[..., :-1]
