"""The numba kernels of the compiled per-sample loop (`wavegen.nn.compiled` drives them): one body step,
the conditioning projection, the vectorised exp, the workers' scratch buffers and one pipeline tick. Plain
index loops over float32 arrays, no allocation per sample; each `_name_py` is the Python source of the compiled
`_name` (None without numba).
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # numba comes with librosa; without it the PyTorch step loop is used
    numba = None

GENERATE, INVERT = 0, 1  # what the loop does with each sample's Gaussian (mu, log_sigma)


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


def _pitch_drive_py(drawn, fixed, back, weight, voicing, source_w, folded, dilation, context, lo, hi, s, out
                    ):  # pragma: no cover - compiled below
    """What a pitch-driven body's source adds to its first layer at samples [lo, hi) (`CompiledLoop._drive`), from
    the outputs drawn so far: per sample t the source channels s_t (`wavegen.nn.pitch_input.PitchInput`, in its
    order: the `fixed` harmonic channels, v_t (x[t - back] (1 - w) + x[t - back + 1] w) for each lag tap, then
    v_t), u_t = s_t @ source_w (R) and the first dilated conv of u, folded into the source:
    sum_j s_(t - (k - 1 - j) d) @ folded[j] (2G). drawn (B, T); fixed (B, H, T); back, weight (B, L, T); voicing
    (B, T); source_w (S, R); folded (k, S, 2G); s (context + hi - lo, S) scratch; out (B, hi - lo, R + 2G)."""
    n_fixed, n_taps, width = fixed.shape[1], back.shape[1], source_w.shape[0]
    residual, kernel = source_w.shape[1], folded.shape[0]
    for b in range(drawn.shape[0]):
        for i in range(context + hi - lo):
            t = lo - context + i
            if t < 0:
                s[i, :] = 0.0
                continue
            for c in range(n_fixed):
                s[i, c] = fixed[b, c, t]
            v = voicing[b, t]
            for j in range(n_taps):
                first = t - back[b, j, t]
                w = weight[b, j, t]
                a = drawn[b, first] if first >= 0 else np.float32(0.0)
                c2 = drawn[b, first + 1] if first + 1 >= 0 else np.float32(0.0)
                s[i, n_fixed + j] = v * (a * (np.float32(1.0) - w) + c2 * w)
            s[i, width - 1] = v
        for i in range(hi - lo):
            row = out[b, i]
            row[:] = 0.0
            _matvec_add(s[context + i], source_w, row[:residual])
            for j in range(kernel):
                _matvec_add(s[context + i - (kernel - 1 - j) * dilation], folded[j], row[residual:])


if numba is not None:
    _exp_into = numba.njit(cache=True, fastmath=True, inline="always")(_exp_into_py)
    _matvec_add = numba.njit(cache=True, fastmath=True, inline="always")(_matvec_add_py)
    _body_step = numba.njit(cache=True, fastmath=True, inline="always")(_body_step_py)
    _scratch = numba.njit(cache=True)(_scratch_py)
    _project = numba.njit(cache=True, fastmath=True, nogil=True)(_project_py)
    _tick = numba.njit(cache=True, parallel=True, nogil=True)(_tick_py)
    _pitch_drive = numba.njit(cache=True, fastmath=True)(_pitch_drive_py)
else:
    _exp_into = _matvec_add = _body_step = _scratch = _project = _tick = _pitch_drive = None
