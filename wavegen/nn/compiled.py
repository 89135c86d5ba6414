"""The body's per-sample loop compiled with numba: sequential CPU inference without Python overhead.

`CausalWaveNet.step` is the reference: one sample through every layer with PyTorch ops, about 0.9 ms
per sample on 2 cores whatever the width, because each of its ~10 small ops per layer pays the
dispatcher. Here the same maths runs as one compiled loop over time:

* the conditioning of every layer is precomputed for a block of samples in one GEMM;
* each dilated convolution reads its k - 1 past inputs from a ring buffer of (k - 1) * d slots
  (the slot read last is the one the new input overwrites), then one fused matrix-vector product;
* the residual and skip 1x1 convolutions are one product; weight norm has nothing to fold (the
  body has none);
* the gate's tanh and sigmoid come from one exp per channel written so that LLVM vectorises it
  (`_exp_into`): the libm calls cost ~5x more and were a third of the loop.

A loop runs a *stack* of bodies, each feeding the next sample by sample: the teacher is a stack of
one (x_t = mu + T sigma eps_t), the student's inverse is its flows from the last
(x^(k-1)_t = (x^(k)_t - mu) / sigma). With fewer batch rows than threads, the stack is cut into
stages of about equal layers that run as a pipeline on separate cores: stage s handles samples
[i span, (i + 1) span) while stage s - 1 already handles the next span; every body depends only on
its own past and on the stage before, so the result is the same as running the stack sample by sample.
The state (ring buffers, last inputs, time) is explicit, and the conditioning is projected span by span,
so a long utterance runs with bounded memory. Tests check it against the PyTorch step and the naive generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from wavegen.nn.wavenet import CausalWaveNet

try:
    import numba
except ImportError:  # numba comes with librosa; without it the PyTorch step loop is used
    numba = None

GENERATE, INVERT = 0, 1  # what the loop does with each sample's Gaussian (mu, log_sigma)
SPAN_VALUES = 2**18  # projected conditioning values per span and stage (float32: 1 MB, cache-resident)


def available(bodies: CausalWaveNet | Sequence[CausalWaveNet], like: Tensor) -> bool:
    """Whether `bodies` can run compiled on tensors like `like`: numba present, float32 on the CPU,
    Gaussian heads (mu, log_sigma). Anything else (CUDA, float64 tests, MoL) uses the PyTorch step."""
    bodies = [bodies] if isinstance(bodies, CausalWaveNet) else bodies
    return (numba is not None and like.device.type == "cpu" and like.dtype == torch.float32
            and all(body.head[-1].out_channels == 2 for body in bodies))


@dataclass
class LoopState:
    """The explicit cache of a compiled loop: ring buffers (B, slots, R) of every layer of every body,
    each body's last input (n_bodies, B), and the time."""

    rings: np.ndarray
    previous: np.ndarray
    time: int = 0


class CompiledLoop:
    """A stack of bodies' weights packed as float32 arrays for the compiled per-sample loop.

    Layers of all bodies are numbered in one sequence; body f owns layers [bounds[f], bounds[f + 1]).
    The bodies may differ in depth but share their widths and kernel size.
    """

    def __init__(self, bodies: CausalWaveNet | Sequence[CausalWaveNet], log_scale_min: float,
                 threads: int | None = None):
        self.threads = threads  # cores the pipeline may use; None: numba's thread count
        bodies = [bodies] if isinstance(bodies, CausalWaveNet) else list(bodies)
        widths = {(b.cfg.kernel_size, b.cfg.residual_channels, b.cfg.gate_channels, b.cfg.skip_channels,
                   b.cfg.n_mels) for b in bodies}
        if len(widths) != 1:
            raise ValueError(f"a compiled stack needs bodies of one width and kernel; got {sorted(widths)}")

        def array(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().float().cpu().numpy())

        blocks = [block for body in bodies for block in body.blocks]
        taps, cond, conv_b, out_w, out_b = zip(*(block.gemm_weights() for block in blocks))
        self.conv_w, self.conv_b = np.stack([array(t) for t in taps]), np.stack([array(b) for b in conv_b])
        self.out_w, self.out_b = np.stack([array(w) for w in out_w]), np.stack([array(b) for b in out_b])
        self.cond_w = torch.cat([c.T for c in cond])  # (layers * 2G, n_mels)
        self.in_w = np.stack([array(body.input.weight[:, 0, 0]) for body in bodies])  # (n_bodies, R)
        self.in_b = np.stack([array(body.input.bias) for body in bodies])
        heads = [body.head_weights() for body in bodies]
        self.h1_w, self.h1_b, self.h2_w, self.h2_b = (np.stack([array(head[i][j]) for head in heads])
                                                      for i in (0, 1) for j in (0, 1))
        self.bounds = np.cumsum([0] + [len(body.blocks) for body in bodies]).astype(np.int64)
        k = bodies[0].cfg.kernel_size
        self.dilations = np.array([d for body in bodies for d in body.cfg.dilations], dtype=np.int64)
        contexts = (k - 1) * self.dilations
        self.offsets = np.concatenate([[0], np.cumsum(contexts)[:-1]]).astype(np.int64)
        self.slots = int(contexts.sum())
        self.kernel_size, self.residual = k, bodies[0].cfg.residual_channels
        self.log_scale_min = float(log_scale_min)

    @property
    def n_bodies(self) -> int:
        return len(self.bounds) - 1

    def init_state(self, batch: int) -> LoopState:
        """Zeros: the left padding of the parallel pass; each body's first input is 0 (the shift right)."""
        return LoopState(np.zeros((batch, self.slots, self.residual), np.float32),
                         np.zeros((self.n_bodies, batch), np.float32))

    def stages(self, batch: int) -> np.ndarray:
        """Body bounds of the pipeline stages (n_stages + 1,): one stage per idle thread, cut where the
        stages' layer counts come closest to equal; one stage when the batch rows fill the threads."""
        threads = numba.get_num_threads() if self.threads is None else self.threads
        count = max(1, min(self.n_bodies, threads // max(1, batch)))
        cuts = [0]
        for s in range(1, count):  # the body boundary nearest to s / count of all layers, past the last cut
            target = s * self.bounds[-1] / count
            cuts.append(min(range(cuts[-1] + 1, self.n_bodies - count + s + 1),
                            key=lambda f: abs(self.bounds[f] - target)))
        return np.array(cuts + [self.n_bodies], dtype=np.int64)

    def run(self, cond: Tensor, values: Tensor, mode: int, state: LoopState, temperature: float = 1.0,
            progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
        """cond (B, n_mels, T) upsampled conditioning, values (B, T) -> outputs, log_sigma (B, T).

        mode GENERATE: values are eps, output x_t = clamp(mu + temperature * sigma * eps_t, -1, 1);
        mode INVERT: values are the stack's outputs, output (values_t - mu) / sigma, body after body.
        Each body's output is its next step's input and the next body's value. log_sigma sums the
        bodies'. `state` advances by T samples.

        Span by span: the conditioning of every layer for the newest span is projected in one GEMM
        into a ring of n_stages spans (a few MB, so the loop reads it from cache), then one parallel
        tick runs each stage on its span. Memory beyond the outputs stays bounded for any T.
        """
        batch, _, length = cond.shape
        stages = self.stages(batch)
        n_stages = len(stages) - 1
        span = max(16, SPAN_VALUES // (batch * self.cond_w.shape[0]))
        spans = -(-length // span)
        rows = cond.float().transpose(1, 2)  # (B, T, n_mels)
        projected = torch.empty(n_stages, batch, span, self.cond_w.shape[0])  # ring: span i in slot i % n_stages
        handed = np.empty((max(1, n_stages - 1), batch, length), np.float32)  # between stages
        out = np.empty((batch, length), np.float32)
        log_sigma = np.empty((batch, length), np.float32)
        values = np.ascontiguousarray(values.float().numpy())
        for tick in range(spans + n_stages - 1):
            if tick < spans:
                lo, hi = tick * span, min(length, (tick + 1) * span)
                torch.matmul(rows[:, lo:hi], self.cond_w.T, out=projected[tick % n_stages, :, :hi - lo])
            _tick(mode, float(temperature), self.log_scale_min, tick, span, projected.numpy(), values, stages,
                  self.bounds, self.in_w, self.in_b, self.conv_w, self.conv_b, self.out_w, self.out_b, self.h1_w,
                  self.h1_b, self.h2_w, self.h2_b, self.dilations, self.offsets, self.kernel_size, state.rings,
                  state.previous, state.time, handed, out, log_sigma)
            if progress is not None and tick >= n_stages - 1:
                progress(min(length, (tick - n_stages + 2) * span), length)
        state.time += length
        return torch.from_numpy(out), torch.from_numpy(log_sigma)

    def run_blocks(self, cond: Tensor, values: Tensor, mode: int, temperature: float = 1.0,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
        """`run` over a whole utterance from a fresh state."""
        return self.run(cond, values, mode, self.init_state(cond.shape[0]), temperature, progress)


def _exp_into_py(x, e, n):  # pragma: no cover - compiled below
    """e[c] = exp(x[c]) for x clamped to [-80, 80], relative error ~1e-7, in loops LLVM vectorises:
    2^(x log2 e) = 2^k 2^f with |f| <= 1/2, a degree-6 polynomial for 2^f, k added to the exponent bits."""
    for c in range(x.shape[0]):
        y = np.float32(1.442695) * min(max(x[c], np.float32(-80.0)), np.float32(80.0))
        k = math.floor(y + np.float32(0.5))
        f = y - k
        e[c] = np.float32(1.0) + f * (np.float32(0.6931472) + f * (np.float32(0.2402265) + f * (
            np.float32(0.05550411) + f * (np.float32(0.009618129) + f * (np.float32(0.0013333558)
                                                                       + f * np.float32(0.00015403530))))))
        n[c] = np.int32(k)
    bits = e.view(np.int32)
    for c in range(x.shape[0]):
        bits[c] += n[c] << 23


def _matvec_add_py(v, w, out):  # pragma: no cover - compiled below
    """out += v @ w for v (n,), w (n, m): eight rows of w per sweep over out, so that out is loaded and
    stored n / 8 times instead of n times (2-3x faster than the plain row loop here)."""
    n, m = w.shape
    for i in range(0, n - 7, 8):
        v0, v1, v2, v3, v4, v5, v6, v7 = v[i], v[i + 1], v[i + 2], v[i + 3], v[i + 4], v[i + 5], v[i + 6], v[i + 7]
        for c in range(m):
            out[c] += (v0 * w[i, c] + v1 * w[i + 1, c] + v2 * w[i + 2, c] + v3 * w[i + 3, c]) + (
                v4 * w[i + 4, c] + v5 * w[i + 5, c] + v6 * w[i + 6, c] + v7 * w[i + 7, c])
    for i in range(n - n % 8, n):
        vi = v[i]
        for c in range(m):
            out[c] += vi * w[i, c]


def _body_step_py(f, x_in, cond_row, bounds, in_w, in_b, conv_w, conv_b, out_w, out_b, h1_w, h1_b, h2_w,
                  h2_b, dilations, offsets, k, rings, now, window, h, a, x, e, n, z, o, skips, hidden):  # pragma: no cover
    """Body f, one sample: its input x_in and the row of projected conditioning -> (mu, log_sigma)
    before clamping; rings (slots, R) of this batch row advance."""
    r, g = h.shape[0], z.shape[0]
    s = hidden.shape[0]
    first, last = bounds[f], bounds[f + 1]
    half = np.float32(math.sqrt(0.5))
    for i in range(r):
        h[i] = in_w[f, i] * x_in + in_b[f, i]
    skips[:] = 0.0
    for layer in range(first, last):
        d = dilations[layer]
        context = (k - 1) * d
        base = offsets[layer]
        for j in range(k - 1):
            slot = base + (now - (k - 1 - j) * d) % context
            window[j * r:(j + 1) * r] = rings[slot]
        window[(k - 1) * r:] = h
        rings[base + now % context] = h  # the oldest slot, read above
        a[:] = conv_b[layer] + cond_row[layer * 2 * g:(layer + 1) * 2 * g]
        _matvec_add(window, conv_w[layer], a)
        # tanh(a) = 2 / (1 + exp(-2a)) - 1 and sigmoid(b) = 1 / (1 + exp(-b)) from one vectorised exp
        for c in range(g):
            x[c] = np.float32(-2.0) * a[c]
            x[g + c] = -a[g + c]
        _exp_into(x, e, n)
        for c in range(g):
            z[c] = (np.float32(2.0) / (np.float32(1.0) + e[c]) - np.float32(1.0)) / (np.float32(1.0) + e[g + c])
        o[:] = out_b[layer]
        _matvec_add(z, out_w[layer], o)
        if layer < last - 1:
            for c in range(r):
                h[c] = (h[c] + o[c]) * half
        for c in range(s):
            skips[c] += o[r + c]
    scale = np.float32(math.sqrt(1.0 / (last - first)))
    for i in range(s):
        skips[i] = max(skips[i] * scale, np.float32(0.0))
    hidden[:] = h1_b[f]
    _matvec_add(skips, h1_w[f], hidden)
    mu, ls = h2_b[f, 0], h2_b[f, 1]
    for i in range(s):
        hi = max(hidden[i], np.float32(0.0))
        mu += hi * h2_w[f, i, 0]
        ls += hi * h2_w[f, i, 1]
    return mu, ls


def _tick_py(mode, temperature, log_scale_min, tick, span, projected, values, stages, bounds, in_w, in_b, conv_w,
             conv_b, out_w, out_b, h1_w, h1_b, h2_w, h2_b, dilations, offsets, k, rings, previous, t0, handed, out,
             log_sigma):  # pragma: no cover - compiled below
    """One tick of the pipeline of len(stages) - 1 stages (shapes as in `CompiledLoop.run`).

    Stage s runs span i = tick - s (samples [i span, (i + 1) span)) of every batch row, reading what
    stage s - 1 wrote to handed[s - 1] in the tick before (ticks are separate calls).
    """
    batch, length = values.shape
    n_stages = stages.shape[0] - 1
    r, gates2 = in_w.shape[1], conv_w.shape[2]
    s = h1_w.shape[1]
    for item in numba.prange(n_stages * batch):
        stage, b = item // batch, item % batch
        start = (tick - stage) * span
        if start < 0 or start >= length:
            continue
        conditioning = projected[(tick - stage) % n_stages, b]  # (span, layers * 2G)
        window = np.empty(conv_w.shape[1], np.float32)
        h = np.empty(r, np.float32)
        a = np.empty(gates2, np.float32)
        x = np.empty(gates2, np.float32)
        e = np.empty(gates2, np.float32)
        n = np.empty(gates2, np.int32)
        z = np.empty(gates2 // 2, np.float32)
        o = np.empty(r + s, np.float32)
        skips = np.empty(s, np.float32)
        hidden = np.empty(s, np.float32)
        source = values if stage == 0 else handed[stage - 1]
        target = out if stage == n_stages - 1 else handed[stage]
        for t in range(start, min(length, start + span)):
            value = source[b, t]
            total = np.float32(0.0)
            for f in range(stages[stage], stages[stage + 1]):
                mu, ls = _body_step(f, previous[f, b], conditioning[t - start], bounds, in_w, in_b, conv_w, conv_b,
                                    out_w, out_b, h1_w, h1_b, h2_w, h2_b, dilations, offsets, k, rings[b], t0 + t,
                                    window, h, a, x, e, n, z, o, skips, hidden)
                ls = max(ls, log_scale_min)
                if mode == GENERATE:  # float32 between bodies, whichever stage runs the next one
                    value = np.float32(min(1.0, max(-1.0, mu + temperature * math.exp(ls) * value)))
                else:
                    value = np.float32((value - mu) * math.exp(-ls))
                previous[f, b] = value
                total += ls
            target[b, t] = value
            log_sigma[b, t] = total if stage == 0 else log_sigma[b, t] + total


if numba is not None:
    _exp_into = numba.njit(cache=True, fastmath=True, inline="always")(_exp_into_py)
    _matvec_add = numba.njit(cache=True, fastmath=True, inline="always")(_matvec_add_py)
    _body_step = numba.njit(cache=True, fastmath=True)(_body_step_py)
    _tick = numba.njit(cache=True, parallel=True, nogil=True)(_tick_py)
else:
    _exp_into = _matvec_add = _body_step = _tick = None
