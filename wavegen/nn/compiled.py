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
span ahead and added in the loop (`CompiledLoop._drive`); a source that reads the waveform one pitch period
back (`wavegen.nn.pitch_input.PitchInput`) is computed from the samples already drawn, so its spans are
no longer than its shortest period allows. Tests check it against the PyTorch step and the
naive generator. The numba kernels themselves live in `wavegen.nn.kernels`; this module packs the weights,
plans the pipeline and drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from wavegen.nn.pitch_input import PitchInput
from wavegen.nn.wavenet import CausalWaveNet

from wavegen.nn.kernels import GENERATE, INVERT, _pitch_drive, _project, _tick, numba  # noqa: F401 (API)
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
        # as time-major matrices: the 1x1 (S, R) and the dilated conv's taps (k, R, 2G), oldest first
        self.source_conv = None
        if bodies[0].source is not None:
            source_w = np.ascontiguousarray(array(bodies[0].source.weight[:, :, 0]).T)  # (S, R)
            taps = array(first.weight).transpose(2, 1, 0)  # (k, R, 2G)
            folded = np.ascontiguousarray(np.einsum("sr,krg->ksg", source_w, taps))  # the conv of u as one of s
            self.source_conv = (source_w, folded, first.dilation[0], first.context)

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

    def _drive(self, arrays: tuple | None, drawn: np.ndarray, batch: int, lo: int, hi: int) -> np.ndarray:
        """What a source adds to a body's first layer at samples [lo, hi): (B, hi - lo, R + 2G), the source's 1x1
        u_t (the residual stream's start) and the first dilated conv of u (with its past, zero before sample 0)
        beside it; (B, 1, 0) without a source. Exact: the layer is linear in its input. `arrays`: the source's
        (`PitchInput.arrays`); `drawn` (B, T): the outputs, valid before `lo` (what a pitch lag reads)."""
        if arrays is None:
            return np.zeros((batch, 1, 0), np.float32)
        source_w, folded, dilation, context = self.source_conv
        out = np.empty((batch, hi - lo, source_w.shape[1] + folded.shape[2]), np.float32)
        scratch = np.empty((context + hi - lo, source_w.shape[0]), np.float32)
        _pitch_drive(drawn, *arrays, source_w, folded, dilation, context, lo, hi, scratch, out)  # no conv bias:
        return out  # the loop adds it

    def run(self, cond: Tensor, values: Tensor, mode: int, state: LoopState, temperature: float = 1.0,
            progress: Callable[[int, int], None] | None = None, source: PitchInput | None = None
            ) -> tuple[Tensor, Tensor]:
        """cond (B, n_mels, T) upsampled conditioning, values (B, T) -> outputs, log_sigma (B, T).

        `source`: a source-driven body's source for the same samples, from the start of the sequence (a fresh
        state); each span's share of it, computed from the outputs of the spans before when it reads the
        waveform (a pitch lag; spans then no longer than `source.span_limit`), is folded into the first layer
        (`_drive`).

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
        if source is not None and source.span_limit is not None:
            if n_stages != 1:
                raise ValueError("a source that reads the outputs runs in one stage")
            span = min(span, source.span_limit)
        spans = -(-length // span)
        features = np.ascontiguousarray(cond.detach().float().numpy())  # read by scalars: no aligned copy
        # span i in slot i % (n_stages + 1); each slot's last row is `_project`'s scratch
        projected = aligned(np.empty((n_stages + 1, batch, span + 1, columns), np.float32))
        for b in range(batch):
            _project(features[b], self.cond_w, projected[0, b], 0, min(length, span), 0, columns)
        handed = np.empty((max(1, n_stages - 1), batch, length), np.float32)  # between stages
        out = np.zeros((batch, length), np.float32)  # what a pitch lag reads, as it is drawn
        arrays = None if source is None else source.arrays()
        log_sigma = np.empty((batch, length), np.float32)
        values = np.ascontiguousarray(values.float().numpy())
        for tick in range(spans + n_stages - 1):
            drive = self._drive(arrays, out, batch, tick * span, min(length, (tick + 1) * span))  # one stage if driven
            _tick(mode, float(temperature), self.log_scale_min, tick, span, items, pieces, features, self.cond_w,
                  projected, values, stages, self.bounds, self.inputs, self.in_taps, self.conv_w, self.conv_b,
                  self.out_w, self.out_b, self.h1_w, self.h1_b, self.h2_w, self.h2_b, self.dilations, self.offsets,
                  state.rings, state.previous, state.time, handed, out, log_sigma, drive)
            if progress is not None and tick >= n_stages - 1:
                progress(min(length, (tick - n_stages + 2) * span), length)
        state.time += length
        return torch.from_numpy(out), torch.from_numpy(log_sigma)

    def run_blocks(self, cond: Tensor, values: Tensor, mode: int, temperature: float = 1.0,
                   progress: Callable[[int, int], None] | None = None, source: PitchInput | None = None
                   ) -> tuple[Tensor, Tensor]:
        """`run` over a whole utterance from a fresh state."""
        return self.run(cond, values, mode, self.init_state(cond.shape[0]), temperature, progress, source)
