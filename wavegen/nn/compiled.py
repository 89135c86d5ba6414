"""The body's per-sample loop compiled with numba: sequential CPU inference without Python overhead.

`CausalWaveNet.step` is the reference: one sample through every layer with PyTorch ops, about 0.9 ms
per sample on 2 cores whatever the width, because each of its ~10 small ops per layer pays the
dispatcher. Here the same maths runs as one compiled loop over time:

* the conditioning of every layer is projected for a span of samples ahead of the loop, on the core
  the pipeline leaves idle (`CompiledLoop.plan`, `_project`);
* each dilated convolution reads its k - 1 past inputs from a ring buffer of (k - 1) * d slots
  (the slot read last is the one the new input overwrites), then one fused matrix-vector product;
* the residual and skip 1x1 convolutions are one product; weight norm has nothing to fold (the
  body has none);
* the gate's tanh and sigmoid come from one exp per channel written so that LLVM vectorises it
  (`_exp_into`): the libm calls cost ~5x more and were a third of the loop;
* no allocation, temporary or shared cache line in the per-sample loop: each worker's buffers are
  carved from one cache-aligned block (`_scratch`), the weights are cache-line aligned (`aligned`),
  and each stage keeps its bodies' last inputs privately during a span.

A loop runs a *stack* of bodies, each feeding the next sample by sample: the teacher is a stack of
one (x_t = mu + T sigma eps_t), the student's inverse is its flows from the last
(x^(k-1)_t = (x^(k)_t - mu) / sigma). With fewer batch rows than threads, the stack is cut into
stages of about equal layers that run as a pipeline on separate cores: stage s handles samples
[i span, (i + 1) span) while stage s - 1 already handles the next span; every body depends only on
its own past and on the stage before, so the result is the same as running the stack sample by sample.
The state (ring buffers, last inputs, time) is explicit, and the conditioning is projected span by span,
so a long utterance runs with bounded memory. A pitch-driven teacher's source enters span by span too: what
it adds to the first layer (its 1x1 and that layer's dilated conv of it, both linear) is computed for the
span ahead and added in the loop (`CompiledLoop._drive`). Tests check it against the PyTorch step and the
naive generator.
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
CACHE_LINE = 64  # bytes
SPAN_VALUES = 2**18  # projected conditioning values per span and stage (float32: 1 MB, cache-resident)
# The conditioning projection of one layer costs about this fraction of the loop's layer step
# (per sample and layer at the default widths, one core: `_project` 0.18 us, the loop 0.93 us; `plan` uses it)
PROJECTION_COST = 0.2


def available(bodies: CausalWaveNet | Sequence[CausalWaveNet], like: Tensor) -> bool:
    """Whether `bodies` can run compiled on tensors like `like`: numba present, float32 on the CPU,
    Gaussian heads (mu, log_sigma), at least 2 residual channels (the first layer's ring keeps two
    scalars per slot), a source input only in a stack of one (the teacher). Anything else (CUDA, float64
    tests, MoL) uses the PyTorch step."""
    bodies = [bodies] if isinstance(bodies, CausalWaveNet) else bodies
    return (numba is not None and like.device.type == "cpu" and like.dtype == torch.float32
            and all(body.head[-1].out_channels == 2 and body.cfg.residual_channels >= 2 for body in bodies)
            and (len(bodies) == 1 or all(body.source is None for body in bodies)))


def aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` starting on a cache line (numpy only promises 16 bytes): the loop's
    vector loads then never straddle two lines. Four packings of the same weights ran up to 11 % apart
    before, 3 % after."""
    if a.flags.c_contiguous and a.ctypes.data % CACHE_LINE == 0:
        return a
    raw = np.empty(a.nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@dataclass
class LoopState:
    """The explicit cache of a compiled loop: ring buffers (B, slots, R) of every layer of every body
    (a body's first layer keeps only its scalar input and a real-step mark per slot: `_body_step`),
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
            return t.detach().float().cpu().numpy()

        blocks = [block for body in bodies for block in body.blocks]
        self.bounds = np.cumsum([0] + [len(body.blocks) for body in bodies]).astype(np.int64)
        taps, cond, conv_b, out_w, out_b = zip(*(block.gemm_weights() for block in blocks))
        self.conv_w = aligned(np.stack([array(t) for t in taps]))  # (layers, k R, 2G)
        self.conv_b = aligned(np.stack([array(b) for b in conv_b]))
        self.out_w = aligned(np.stack([array(w) for w in out_w]))  # (layers, G, R + S)
        self.out_b = aligned(np.stack([array(b) for b in out_b]))
        self.cond_w = aligned(array(torch.cat(cond, 1)))  # (n_mels, layers * 2G)
        in_w = np.stack([array(body.input.weight[:, 0, 0]) for body in bodies])  # (n_bodies, R)
        in_b = np.stack([array(body.input.bias) for body in bodies])
        self.inputs = aligned(np.stack([in_w, in_b], 1))  # (n_bodies, 2, R): the input 1x1's weight and bias
        # A body's first layer sees h_0 = in_w x + in_b, an affine map of one scalar: its taps fold into
        # per-tap vectors, x_j (in_w W_j) + in_b W_j, instead of a (k R, 2G) product (`_body_step`)
        k, r = bodies[0].cfg.kernel_size, bodies[0].cfg.residual_channels
        if r < 2:
            raise ValueError("the compiled loop keeps (x, real) in the first layer's ring rows: needs R >= 2")
        taps_by_channel = self.conv_w[self.bounds[:-1]].reshape(len(bodies), k, r, -1)  # each body's layer 0
        self.in_taps = aligned(np.stack([np.einsum("fi,fkic->fkc", in_w, taps_by_channel),  # (n_bodies, k, 2, 2G)
                                         np.einsum("fi,fkic->fkc", in_b, taps_by_channel)], 2))
        heads = [body.head_weights() for body in bodies]
        self.h1_w, self.h1_b, self.h2_w, self.h2_b = (aligned(np.stack([array(head[i][j]) for head in heads]))
                                                      for i in (0, 1) for j in (0, 1))
        self.dilations = np.array([d for body in bodies for d in body.cfg.dilations], dtype=np.int64)
        contexts = (k - 1) * self.dilations
        self.offsets = np.concatenate([[0], np.cumsum(contexts)[:-1]]).astype(np.int64)
        self.slots = int(contexts.sum())
        self.residual = r
        self.log_scale_min = float(log_scale_min)
        # a source input (a stack of one): its 1x1 and the first layer's dilated conv, for `_drive`
        if any(body.source is not None for body in bodies) and len(bodies) != 1:
            raise ValueError("a compiled stack takes a source input only with one body")
        first = bodies[0].blocks[0].conv
        self.source_conv = None if bodies[0].source is None else (
            bodies[0].source.weight.detach().float().clone(), first.weight.detach().float().clone(),
            first.dilation[0], first.context)

    @property
    def n_bodies(self) -> int:
        return len(self.bounds) - 1

    def init_state(self, batch: int) -> LoopState:
        """Zeros: the left padding of the parallel pass; each body's first input is 0 (the shift right)."""
        return LoopState(aligned(np.zeros((batch, self.slots, self.residual), np.float32)),
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

    def plan(self, batch: int, stages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each worker's share of a tick: items (workers, n) of stage runs (stage * batch + row, -1 pads)
        and pieces (workers, m, 3) of the next span's projection (row, first and end column, -1 pads).

        Stage runs go to the least-loaded worker, longest first; then the projection, one layer's
        columns at a time, fills the workers that wait on the slowest stage (water-filling with
        `PROJECTION_COST`), in contiguous column ranges. With one batch row the projection thus runs
        on the core the pipeline leaves idle (the teacher's second core, the student's lighter stage).
        """
        threads = numba.get_num_threads() if self.threads is None else self.threads
        n_stages, layers = len(stages) - 1, self.bounds[stages[1:]] - self.bounds[stages[:-1]]
        workers = max(1, min(threads, n_stages * batch + 1))
        loads, items = np.zeros(workers), [[] for _ in range(workers)]
        for item in sorted(range(n_stages * batch), key=lambda i: -layers[i // batch]):
            w = int(np.argmin(loads))
            items[w].append(item)
            loads[w] += layers[item // batch]
        counts = np.zeros(workers, np.int64)  # projected layers (of all rows, in order) per worker
        for _ in range(batch * self.bounds[-1]):
            w = int(np.argmin(loads + (counts + 1) * PROJECTION_COST))
            counts[w] += 1
        layers_total, width = self.bounds[-1], self.cond_w.shape[1] // self.bounds[-1]
        ends = np.cumsum(counts)  # worker w projects units [ends[w] - counts[w], ends[w]) of (row, layer)
        pieces = [[] for _ in range(workers)]
        for w in range(workers):
            for b in range(batch):  # its units cut at row boundaries, as (row, first and end column)
                lo, hi = max(ends[w] - counts[w], b * layers_total), min(ends[w], (b + 1) * layers_total)
                if lo < hi:
                    pieces[w].append((b, (lo - b * layers_total) * width, (hi - b * layers_total) * width))
        padded_items = np.full((workers, max(map(len, items))), -1, np.int64)
        padded_pieces = np.full((workers, max(1, max(map(len, pieces))), 3), -1, np.int64)
        for w in range(workers):
            padded_items[w, :len(items[w])] = items[w]
            padded_pieces[w, :len(pieces[w])] = np.reshape(pieces[w], (-1, 3))
        return padded_items, padded_pieces

    def _drive(self, source: Tensor | None, batch: int, lo: int, hi: int) -> np.ndarray:
        """What a source adds to a body's first layer at samples [lo, hi): (B, hi - lo, R + 2G), the source's 1x1
        u_t (the residual stream's start) and the first dilated conv of u (with its past, zero before sample 0)
        beside it; (B, 1, 0) without a source. Exact: the layer is linear in its input."""
        if source is None:
            return np.zeros((batch, 1, 0), np.float32)
        source_w, conv_w, dilation, context = self.source_conv
        start = max(0, lo - context)
        u = torch.nn.functional.conv1d(source[..., start:hi].float(), source_w)  # (B, R, hi - start)
        u = torch.nn.functional.pad(u, (context - (lo - start), 0))  # zeros before sample 0
        v = torch.nn.functional.conv1d(u, conv_w, dilation=dilation)  # (B, 2G, hi - lo), no bias (the loop adds it)
        return np.ascontiguousarray(torch.cat([u[..., context:], v], 1).transpose(1, 2).numpy())

    def run(self, cond: Tensor, values: Tensor, mode: int, state: LoopState, temperature: float = 1.0,
            progress: Callable[[int, int], None] | None = None, source: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
        """cond (B, n_mels, T) upsampled conditioning, values (B, T) -> outputs, log_sigma (B, T).

        `source` (B, S, T): a source-driven body's source signal for the same samples, from the start of the
        sequence (a fresh state); each span's share of it is folded into the first layer (`_drive`).

        mode GENERATE: values are eps, output x_t = clamp(mu + temperature * sigma * eps_t, -1, 1);
        mode INVERT: values are the stack's outputs, output (values_t - mu) / sigma, body after body.
        Each body's output is its next step's input and the next body's value. log_sigma sums the
        bodies'. `state` advances by T samples.

        Span by span: in one parallel tick each stage runs its span while the workers the pipeline
        leaves idle project the conditioning of every layer for the next span (`plan`) into a ring of
        n_stages + 1 spans (a few MB, so the loop reads it from cache). Memory beyond the outputs stays
        bounded for any T.
        """
        batch, _, length = cond.shape
        if (source is None) != (self.source_conv is None) or (source is not None and state.time != 0):
            raise ValueError("a source-driven body needs its source, from the start of the sequence")
        stages = self.stages(batch)
        n_stages = len(stages) - 1
        items, pieces = self.plan(batch, stages)
        columns = self.cond_w.shape[1]
        span = max(16, SPAN_VALUES // (batch * columns))
        spans = -(-length // span)
        features = np.ascontiguousarray(cond.detach().float().numpy())  # read by scalars: no aligned copy
        # span i in slot i % (n_stages + 1); each slot's last row is `_project`'s scratch
        projected = aligned(np.empty((n_stages + 1, batch, span + 1, columns), np.float32))
        for b in range(batch):
            _project(features[b], self.cond_w, projected[0, b], 0, min(length, span), 0, columns)
        handed = np.empty((max(1, n_stages - 1), batch, length), np.float32)  # between stages
        out = np.empty((batch, length), np.float32)
        log_sigma = np.empty((batch, length), np.float32)
        values = np.ascontiguousarray(values.float().numpy())
        for tick in range(spans + n_stages - 1):
            drive = self._drive(source, batch, tick * span, min(length, (tick + 1) * span))  # one stage if driven
            _tick(mode, float(temperature), self.log_scale_min, tick, span, items, pieces, features, self.cond_w,
                  projected, values, stages, self.bounds, self.inputs, self.in_taps, self.conv_w, self.conv_b,
                  self.out_w, self.out_b, self.h1_w, self.h1_b, self.h2_w, self.h2_b, self.dilations, self.offsets,
                  state.rings, state.previous, state.time, handed, out, log_sigma, drive)
            if progress is not None and tick >= n_stages - 1:
                progress(min(length, (tick - n_stages + 2) * span), length)
        state.time += length
        return torch.from_numpy(out), torch.from_numpy(log_sigma)

    def run_blocks(self, cond: Tensor, values: Tensor, mode: int, temperature: float = 1.0,
                   progress: Callable[[int, int], None] | None = None, source: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
        """`run` over a whole utterance from a fresh state."""
        return self.run(cond, values, mode, self.init_state(cond.shape[0]), temperature, progress, source)


def _exp_into_py(x, e, n):  # pragma: no cover - compiled below
    """e[c] = exp(x[c]) for x clamped to [-80, 80], in loops LLVM vectorises:
    2^(x log2 e) = 2^k 2^f with |f| <= 1/2, a degree-6 polynomial for 2^f, k added to the exponent bits;
    all in float32 (relative error below 1e-6 for |x| < 10, 5e-6 at |x| = 80)."""
    for c in range(x.shape[0]):
        y = np.float32(1.442695) * min(max(x[c], np.float32(-80.0)), np.float32(80.0))
        k = np.floor(y + np.float32(0.5))  # float32: math.floor's int64 would make the polynomial float64
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


def _body_step_py(f, x_in, conditioning, row, bounds, inputs, in_taps, conv_w, conv_b, out_w, out_b,
                  h1_w, h1_b, h2_w, h2_b, dilations, offsets, rings, now, window, h, a, x, e, n, z, o, skips,
                  hidden, drive):  # pragma: no cover - compiled below
    """Body f, one sample: its input x_in and row `row` of the projected conditioning -> (mu, log_sigma)
    before clamping; rings (slots, R) of this batch row advance. Index loops, no array expressions: a
    temporary array would be an allocation per layer and sample.

    The first layer's input is h_0 = in_w x + in_b, so its ring keeps the scalar x and a 1 marking a
    real (not padded) step in each slot's first two entries, and its taps are k scalar-vector products
    with the folded `in_taps` (n_bodies, k, 2, 2G: in_w W_j and in_b W_j) instead of a (k R, 2G)
    product; a padded tap (ring still zero) adds nothing, like the parallel pass's zero padding.

    A source-driven body's row `row` of `drive` (span, R + 2G) holds what its source adds: to h_0 (first R) and
    to the first layer's conv (`CompiledLoop._drive`); `drive` (1, 0) means no source. (At most 30 arguments:
    numba inlines no more; the kernel size is in_taps.shape[1].)"""
    r, g, k = h.shape[0], z.shape[0], in_taps.shape[1]
    s = hidden.shape[0]
    first, last = bounds[f], bounds[f + 1]
    half = np.float32(math.sqrt(0.5))
    driven = drive.shape[1] > 0
    for i in range(r):
        h[i] = inputs[f, 0, i] * x_in + inputs[f, 1, i]
        if driven:
            h[i] += drive[row, i]
    for i in range(s):
        skips[i] = 0.0
    for layer in range(first, last):
        d = dilations[layer]
        context = (k - 1) * d
        base = offsets[layer]
        column = layer * 2 * g
        if layer == first:
            for c in range(2 * g):
                a[c] = conv_b[layer, c] + conditioning[row, column + c] + (
                    x_in * in_taps[f, k - 1, 0, c] + in_taps[f, k - 1, 1, c])
                if driven:
                    a[c] += drive[row, r + c]
            for j in range(k - 1):
                slot = base + (now - (k - 1 - j) * d) % context
                past, real = rings[slot, 0], rings[slot, 1]
                for c in range(2 * g):
                    a[c] += real * (past * in_taps[f, j, 0, c] + in_taps[f, j, 1, c])
            slot = base + now % context  # the oldest slot, read above
            rings[slot, 0] = x_in
            rings[slot, 1] = 1.0
        else:
            for j in range(k - 1):
                slot = base + (now - (k - 1 - j) * d) % context
                for i in range(r):
                    window[j * r + i] = rings[slot, i]
            slot = base + now % context  # the oldest slot, read above
            for i in range(r):
                window[(k - 1) * r + i] = h[i]
                rings[slot, i] = h[i]
            for c in range(2 * g):
                a[c] = conv_b[layer, c] + conditioning[row, column + c]
            _matvec_add(window, conv_w[layer], a)
        # tanh(a) = 2 / (1 + exp(-2a)) - 1 and sigmoid(b) = 1 / (1 + exp(-b)) from one vectorised exp
        for c in range(g):
            x[c] = np.float32(-2.0) * a[c]
            x[g + c] = -a[g + c]
        _exp_into(x, e, n)
        for c in range(g):
            z[c] = (np.float32(2.0) / (np.float32(1.0) + e[c]) - np.float32(1.0)) / (np.float32(1.0) + e[g + c])
        for c in range(r + s):
            o[c] = out_b[layer, c]
        _matvec_add(z, out_w[layer], o)
        if layer < last - 1:
            for c in range(r):
                h[c] = (h[c] + o[c]) * half
        for c in range(s):
            skips[c] += o[r + c]
    scale = np.float32(math.sqrt(1.0 / (last - first)))
    for i in range(s):
        skips[i] = max(skips[i] * scale, np.float32(0.0))
    for i in range(s):
        hidden[i] = h1_b[f, i]
    _matvec_add(skips, h1_w[f], hidden)
    mu, ls = h2_b[f, 0], h2_b[f, 1]
    for i in range(s):
        hi = max(hidden[i], np.float32(0.0))
        mu += hi * h2_w[f, i, 0]
        ls += hi * h2_w[f, i, 1]
    return mu, ls


def _project_py(features, weight, out, lo, hi, c0, c1):  # pragma: no cover - compiled below
    """out[t - lo, c0:c1] = features[:, t] @ weight[:, c0:c1] for t in [lo, hi): features (n_mels, T),
    weight (n_mels, C), out (span + 1, C) with hi - lo <= span; its last row is scratch. Four time steps
    and four mel bins per sweep over the output columns, so each weight value loaded feeds four rows
    (135 GFLOP/s on one core here, against 76 for two steps by eight bins); the steps of a last group
    past hi recompute step hi - 1 into the scratch row."""
    n, spare = features.shape[0], out.shape[0] - 1
    for t in range(lo, hi, 4):
        t1, t2, t3 = min(t + 1, hi - 1), min(t + 2, hi - 1), min(t + 3, hi - 1)
        o0 = out[t - lo, c0:c1]
        o1 = out[t1 - lo if t + 1 < hi else spare, c0:c1]
        o2 = out[t2 - lo if t + 2 < hi else spare, c0:c1]
        o3 = out[t3 - lo if t + 3 < hi else spare, c0:c1]
        o0[:] = 0.0
        o1[:] = 0.0
        o2[:] = 0.0
        o3[:] = 0.0
        for i in range(0, n - 3, 4):
            a0, a1, a2, a3 = features[i, t], features[i + 1, t], features[i + 2, t], features[i + 3, t]
            b0, b1, b2, b3 = features[i, t1], features[i + 1, t1], features[i + 2, t1], features[i + 3, t1]
            d0, d1, d2, d3 = features[i, t2], features[i + 1, t2], features[i + 2, t2], features[i + 3, t2]
            e0, e1, e2, e3 = features[i, t3], features[i + 1, t3], features[i + 2, t3], features[i + 3, t3]
            w0, w1, w2, w3 = weight[i, c0:c1], weight[i + 1, c0:c1], weight[i + 2, c0:c1], weight[i + 3, c0:c1]
            for c in range(c1 - c0):
                x0, x1, x2, x3 = w0[c], w1[c], w2[c], w3[c]
                o0[c] += (a0 * x0 + a1 * x1) + (a2 * x2 + a3 * x3)
                o1[c] += (b0 * x0 + b1 * x1) + (b2 * x2 + b3 * x3)
                o2[c] += (d0 * x0 + d1 * x1) + (d2 * x2 + d3 * x3)
                o3[c] += (e0 * x0 + e1 * x1) + (e2 * x2 + e3 * x3)
        for i in range(n - n % 4, n):
            a, b, d, e, w = features[i, t], features[i, t1], features[i, t2], features[i, t3], weight[i, c0:c1]
            for c in range(c1 - c0):
                o0[c] += a * w[c]
                o1[c] += b * w[c]
                o2[c] += d * w[c]
                o3[c] += e * w[c]


def _scratch_py(window, r, gates2, s):  # pragma: no cover - compiled below
    """A worker's step buffers (window, h, a, x, e, n, z, o, skips, hidden) carved from one block, each
    on its own cache lines with a line to spare at both ends: buffers that two cores write every sample
    must not share a line, which small separate allocations of two threads can."""
    line = 16  # float32 per 64-byte line
    sizes = (window, r, gates2, gates2, gates2, gates2, gates2 // 2, r + s, s, s)
    starts = np.empty(len(sizes) + 1, np.int64)
    starts[0] = 2 * line
    for i in range(len(sizes)):
        starts[i + 1] = starts[i] + -(-sizes[i] // line) * line
    raw = np.empty(starts[-1] + 3 * line, np.float32)
    block = raw[(-raw.ctypes.data % (4 * line)) // 4:]  # starting on a line
    return (block[starts[0]:starts[0] + window], block[starts[1]:starts[1] + r], block[starts[2]:starts[2] + gates2],
            block[starts[3]:starts[3] + gates2], block[starts[4]:starts[4] + gates2],
            block[starts[5]:starts[5] + gates2].view(np.int32), block[starts[6]:starts[6] + gates2 // 2],
            block[starts[7]:starts[7] + r + s], block[starts[8]:starts[8] + s], block[starts[9]:starts[9] + s])


def _tick_py(mode, temperature, log_scale_min, tick, span, items, pieces, features, cond_w, projected, values, stages,
             bounds, inputs, in_taps, conv_w, conv_b, out_w, out_b, h1_w, h1_b, h2_w, h2_b, dilations, offsets,
             rings, previous, t0, handed, out, log_sigma, drive):  # pragma: no cover - compiled below
    """One tick of the pipeline of len(stages) - 1 stages (shapes as in `CompiledLoop.run`), one
    parallel iteration per worker of `CompiledLoop.plan`.

    Stage s runs span i = tick - s (samples [i span, (i + 1) span)) of every batch row, reading what
    stage s - 1 wrote to handed[s - 1] in the tick before (ticks are separate calls), and the
    conditioning projected into slot i % (n_stages + 1). Meanwhile the workers' projection pieces
    fill the slot of span tick + 1, which no stage reads in this tick. `drive` (B, span, R + 2G): a source-driven
    body's span (one stage: span tick), or (B, 1, 0).
    """
    batch, length = values.shape
    n_stages = stages.shape[0] - 1
    r, gates2 = inputs.shape[2], conv_w.shape[2]
    s = h1_w.shape[1]
    for worker in numba.prange(items.shape[0]):
        for item in items[worker]:
            if item < 0:
                break
            stage, b = item // batch, item % batch
            start = (tick - stage) * span
            if start < 0 or start >= length:
                continue
            conditioning = projected[(tick - stage) % (n_stages + 1), b]  # (span, layers * 2G)
            window, h, a, x, e, n, z, o, skips, hidden = _scratch(conv_w.shape[1], r, gates2, s)
            source = values if stage == 0 else handed[stage - 1]
            target = out if stage == n_stages - 1 else handed[stage]
            last = previous[:, b].copy()  # written per sample: a private copy (the stages share previous's line)
            ring = rings[b]
            for t in range(start, min(length, start + span)):
                value = source[b, t]
                total = np.float32(0.0)
                for f in range(stages[stage], stages[stage + 1]):
                    mu, ls = _body_step(f, last[f], conditioning, t - start, bounds, inputs, in_taps,
                                        conv_w, conv_b, out_w, out_b, h1_w, h1_b, h2_w, h2_b, dilations, offsets,
                                        ring, t0 + t, window, h, a, x, e, n, z, o, skips, hidden, drive[b])
                    ls = max(ls, log_scale_min)
                    if mode == GENERATE:  # float32 between bodies, whichever stage runs the next one
                        value = np.float32(min(1.0, max(-1.0, mu + temperature * math.exp(ls) * value)))
                    else:
                        value = np.float32((value - mu) * math.exp(-ls))
                    last[f] = value
                    total += ls
                target[b, t] = value
                log_sigma[b, t] = total if stage == 0 else log_sigma[b, t] + total
            previous[stages[stage]:stages[stage + 1], b] = last[stages[stage]:stages[stage + 1]]
        lo = (tick + 1) * span
        if lo < length:
            for piece in pieces[worker]:
                if piece[0] < 0:
                    break
                _project(features[piece[0]], cond_w, projected[(tick + 1) % (n_stages + 1), piece[0]], lo,
                         min(length, lo + span), piece[1], piece[2])


if numba is not None:
    _exp_into = numba.njit(cache=True, fastmath=True, inline="always")(_exp_into_py)
    _matvec_add = numba.njit(cache=True, fastmath=True, inline="always")(_matvec_add_py)
    _body_step = numba.njit(cache=True, fastmath=True, inline="always")(_body_step_py)
    _scratch = numba.njit(cache=True)(_scratch_py)
    _project = numba.njit(cache=True, fastmath=True, nogil=True)(_project_py)
    _tick = numba.njit(cache=True, parallel=True, nogil=True)(_tick_py)
else:
    _exp_into = _matvec_add = _body_step = _scratch = _project = _tick = None
