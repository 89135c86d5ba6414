"""The body's per-sample loop compiled with numba: sequential CPU inference without Python overhead.

`CausalWaveNet.step` is the reference: one sample through every layer with PyTorch ops, about 0.9 ms
per sample on 2 cores whatever the width, because each of its ~10 small ops per layer pays the
dispatcher. Here the same maths runs as one compiled loop over time:

* the conditioning of every layer is precomputed for a block of samples in one GEMM;
* each dilated convolution reads its k - 1 past inputs from a ring buffer of (k - 1) * d slots
  (the slot read last is the one the new input overwrites), then one fused matrix-vector product;
* the residual and skip 1x1 convolutions are one product; weight norm has nothing to fold (the
  body has none).

Used for Gaussian heads on the CPU: the teacher's generation (x_t = mu + T sigma eps_t) and the
student's inverse (x^(k-1)_t = (x^(k)_t - mu) / sigma). The state (ring buffers, last output, time)
is explicit, so a long utterance runs block by block with bounded memory. Tests check it against
the PyTorch step and the naive generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from wavegen.nn.wavenet import CausalWaveNet

try:
    import numba
except ImportError:  # numba comes with librosa; without it the PyTorch step loop is used
    numba = None

GENERATE, INVERT = 0, 1  # what the loop does with each sample's Gaussian (mu, log_sigma)
BLOCK = 4096  # samples per call: the precomputed conditioning stays ~8 MB for 16 layers x 128 gates


def available(body: CausalWaveNet, like: Tensor) -> bool:
    """Whether `body` can run compiled on tensors like `like`: numba present, float32 on the CPU, a
    Gaussian head (mu, log_sigma). Anything else (CUDA, float64 tests, MoL) uses the PyTorch step."""
    return (numba is not None and like.device.type == "cpu" and like.dtype == torch.float32
            and body.head[-1].out_channels == 2)


@dataclass
class LoopState:
    """The explicit cache of a compiled loop: ring buffers (B, slots, R), last output (B,), time."""

    rings: np.ndarray
    previous: np.ndarray
    time: int = 0


class CompiledLoop:
    """One body's weights packed as float32 arrays for the compiled per-sample loop."""

    def __init__(self, body: CausalWaveNet, log_scale_min: float):
        cfg, k = body.cfg, body.cfg.kernel_size

        def array(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().float().cpu().numpy())

        taps, cond, conv_b, out_w, out_b = zip(*(block.gemm_weights() for block in body.blocks))
        self.conv_w, self.conv_b = np.stack([array(t) for t in taps]), np.stack([array(b) for b in conv_b])
        self.out_w, self.out_b = np.stack([array(w) for w in out_w]), np.stack([array(b) for b in out_b])
        self.cond_w = torch.cat([c.T for c in cond])  # (L * 2G, n_mels)
        self.in_w, self.in_b = array(body.input.weight[:, 0, 0]), array(body.input.bias)
        (h1_w, h1_b), (h2_w, h2_b) = body.head_weights()
        self.h1_w, self.h1_b, self.h2_w, self.h2_b = array(h1_w), array(h1_b), array(h2_w), array(h2_b)
        self.dilations = np.array(cfg.dilations, dtype=np.int64)
        contexts = (k - 1) * self.dilations
        self.offsets = np.concatenate([[0], np.cumsum(contexts)[:-1]]).astype(np.int64)
        self.slots = int(contexts.sum())
        self.kernel_size, self.residual = k, cfg.residual_channels
        self.log_scale_min = float(log_scale_min)

    def init_state(self, batch: int) -> LoopState:
        """Zeros: the left padding of the parallel pass; the first input is 0 (the shift right)."""
        return LoopState(np.zeros((batch, self.slots, self.residual), np.float32), np.zeros(batch, np.float32))

    def run(self, cond: Tensor, values: Tensor, mode: int, state: LoopState,
            temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """cond (B, n_mels, T) upsampled conditioning, values (B, T) -> outputs, log_sigma (B, T).

        mode GENERATE: values are eps, output x_t = clamp(mu + temperature * sigma * eps_t, -1, 1);
        mode INVERT: values are the flow's outputs, output (values_t - mu) / sigma.
        Each output is the next step's input. `state` advances by T samples.
        """
        batch, _, length = cond.shape
        projected = np.ascontiguousarray(
            (cond.float().transpose(1, 2) @ self.cond_w.T).numpy())  # (B, T, L * 2G)
        out = np.empty((batch, length), np.float32)
        log_sigma = np.empty((batch, length), np.float32)
        _loop(mode, float(temperature), self.log_scale_min, projected,
              np.ascontiguousarray(values.float().numpy()), self.in_w, self.in_b, self.conv_w, self.conv_b,
              self.out_w, self.out_b, self.h1_w, self.h1_b, self.h2_w, self.h2_b, self.dilations, self.offsets,
              self.kernel_size, state.rings, state.previous, state.time, out, log_sigma)
        state.time += length
        return torch.from_numpy(out), torch.from_numpy(log_sigma)

    def run_blocks(self, cond: Tensor, values: Tensor, mode: int, temperature: float = 1.0,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
        """`run` over a whole utterance from a fresh state, BLOCK samples per call (bounded memory)."""
        length = cond.shape[-1]
        state = self.init_state(cond.shape[0])
        pieces = []
        for start in range(0, length, BLOCK):
            pieces.append(self.run(cond[..., start:start + BLOCK], values[:, start:start + BLOCK], mode, state,
                                   temperature))
            if progress is not None:
                progress(min(length, start + BLOCK), length)
        return torch.cat([p[0] for p in pieces], 1), torch.cat([p[1] for p in pieces], 1)


def _loop_py(mode, temperature, log_scale_min, cond, values, in_w, in_b, conv_w, conv_b, out_w, out_b,
             h1_w, h1_b, h2_w, h2_b, dilations, offsets, k, rings, previous, t0, out, log_sigma):  # pragma: no cover
    """The per-sample loop; compiled by numba below (shapes as in `CompiledLoop`)."""
    batch, length = values.shape
    layers, taps_r, gates2 = conv_w.shape
    r = in_w.shape[0]
    g = gates2 // 2
    s = h1_w.shape[0]
    skip_scale = math.sqrt(1.0 / layers)
    half = math.sqrt(0.5)
    for b in numba.prange(batch):
        window = np.empty(taps_r, np.float32)
        h = np.empty(r, np.float32)
        a = np.empty(gates2, np.float32)
        z = np.empty(g, np.float32)
        o = np.empty(r + s, np.float32)
        skips = np.empty(s, np.float32)
        hidden = np.empty(s, np.float32)
        x_prev = previous[b]
        for t in range(length):
            now = t0 + t
            for i in range(r):
                h[i] = in_w[i] * x_prev + in_b[i]
            skips[:] = 0.0
            for layer in range(layers):
                d = dilations[layer]
                context = (k - 1) * d
                base = offsets[layer]
                for j in range(k - 1):
                    slot = base + (now - (k - 1 - j) * d) % context
                    window[j * r:(j + 1) * r] = rings[b, slot]
                window[(k - 1) * r:] = h
                rings[b, base + now % context] = h  # the oldest slot, read above
                a[:] = conv_b[layer] + cond[b, t, layer * gates2:(layer + 1) * gates2]
                for i in range(taps_r):
                    wi = window[i]
                    for c in range(gates2):
                        a[c] += wi * conv_w[layer, i, c]
                for c in range(g):
                    z[c] = math.tanh(a[c]) / (1.0 + math.exp(-a[g + c]))
                o[:] = out_b[layer]
                for i in range(g):
                    zi = z[i]
                    for c in range(r + s):
                        o[c] += zi * out_w[layer, i, c]
                if layer < layers - 1:
                    for c in range(r):
                        h[c] = (h[c] + o[c]) * half
                for c in range(s):
                    skips[c] += o[r + c]
            hidden[:] = h1_b
            for i in range(s):
                si = max(skips[i] * skip_scale, 0.0)
                for c in range(s):
                    hidden[c] += si * h1_w[i, c]
            mu, ls = h2_b[0], h2_b[1]
            for i in range(s):
                hi = max(hidden[i], 0.0)
                mu += hi * h2_w[i, 0]
                ls += hi * h2_w[i, 1]
            ls = max(ls, log_scale_min)
            if mode == GENERATE:
                x_prev = min(1.0, max(-1.0, mu + temperature * math.exp(ls) * values[b, t]))
            else:
                x_prev = (values[b, t] - mu) * math.exp(-ls)
            out[b, t] = x_prev
            log_sigma[b, t] = ls
        previous[b] = x_prev


_loop = numba.njit(cache=True, parallel=True, nogil=True)(_loop_py) if numba is not None else None
