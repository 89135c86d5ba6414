"""The body's parallel pass for inference, as large GEMMs in bfloat16.

`CausalWaveNet.forward` is the reference (channel-major conv1d in float32, what training runs). On
CPUs with bf16 matrix units, a bf16 `conv1d` is not faster, while a bf16 matmul is several times
faster than float32 (measured on this machine: ~400 vs ~90 GFLOP/s at the student's sizes). So here
each layer is one matmul over time-major rows [x_(t-(k-1)d), ..., x_(t-d), x_t, c_t] (B, T, k R + n_mels)
against the stacked conv and conditioning weights, then one matmul for the residual and skip 1x1s.
Only the GEMM operands are bf16: the residual stream, the skip sum, the gates and the head run in
float32. Tests bound the difference from the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wavegen.nn.wavenet import CausalWaveNet


class PackedBody:
    """A frozen copy of one body's weights in GEMM layout; call it like the body (inference only).

    Every intermediate lives in buffers reused across layers and calls of the same shape (fresh
    multi-MB tensors each op cost page faults that outweighed the GEMMs), updated in place. Elementwise
    passes are folded into the GEMMs where they can be: the conv bias is the weight row of a constant-1
    column of the rows; tanh(a) = 2 sigmoid(2a) - 1, so one sigmoid covers all 2G channels, and
    tanh(a) sigmoid(b) = 2 s_a s_b - s_b, so the output GEMM takes [s_a s_b, s_b] against [2 W; -W].
    """

    def __init__(self, body: CausalWaveNet, dtype: torch.dtype = torch.bfloat16):
        cfg = body.cfg
        k, g = cfg.kernel_size, cfg.gate_channels
        self.dtype, self.dilations, self.kernel_size, self.residual = dtype, cfg.dilations, k, cfg.residual_channels
        self.margin = (k - 1) * max(cfg.dilations)  # zero rows before t = 0: the causal left padding
        tanh_half = torch.cat([torch.full((g,), 2.0), torch.ones(g)])  # tanh(a) = 2 sigmoid(2a) - 1
        self.layers = []
        for block in body.blocks:
            taps, cond, conv_b, out_w, out_b = block.gemm_weights()
            w_in = torch.cat([taps, cond, conv_b[None]]) * tanh_half  # (k R + n_mels + 1, 2G): bias row last
            w_out = torch.cat([2.0 * out_w, -out_w])  # (2G, R + S) against [s_a s_b, s_b]
            self.layers.append((w_in.to(dtype).contiguous(), w_out.to(dtype).contiguous(), out_b,
                                block.residual is not None))
        self.input_w = body.input.weight[:, 0, 0].detach().float().clone()
        self.input_b = body.input.bias.detach().float().clone()
        self.head = [(w.contiguous(), b) for w, b in body.head_weights()]
        self._buffers: dict[tuple[int, int, int], dict[str, Tensor]] = {}

    def _workspace(self, batch: int, length: int, n_mels: int) -> dict[str, Tensor]:
        key = (batch, length, n_mels)
        if key not in self._buffers:
            self._buffers.clear()  # one shape at a time (the vocoder's chunks share one length)
            k, r = self.kernel_size, self.residual
            gates, outs = self.layers[0][0].shape[1], self.layers[0][1].shape[1]
            rows = torch.empty(batch, length, k * r + n_mels + 1, dtype=self.dtype)
            rows[..., -1] = 1.0  # the bias column
            self._buffers[key] = {
                "rows": rows,
                "padded": torch.zeros(batch, self.margin + length, r, dtype=self.dtype),
                "pre": torch.empty(batch, length, gates, dtype=self.dtype),
                "out": torch.empty(batch, length, outs, dtype=self.dtype),
                "out32": torch.empty(batch, length, outs),
            }
        return self._buffers[key]

    @torch.inference_mode()
    def __call__(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, 1, T), cond (B, n_mels, T) -> (B, C_out, T) float32, as `CausalWaveNet.forward`."""
        (batch, n_mels, length), k, r = cond.shape, self.kernel_size, self.residual
        space = self._workspace(batch, length, n_mels)
        rows, padded, pre, out, out32 = (space[n] for n in ("rows", "padded", "pre", "out", "out32"))
        rows[..., k * r:-1].copy_(cond.transpose(1, 2))  # the conditioning columns, shared by every layer
        h = x.transpose(1, 2).float() * self.input_w + self.input_b  # (B, T, R) float32 residual stream
        skips = torch.zeros(batch, length, out.shape[-1] - r)
        for (w_in, w_out, b_out, has_residual), d in zip(self.layers, self.dilations):
            padded[:, self.margin:].copy_(h)
            for j in range(k):  # tap j sees x_(t - (k - 1 - j) d)
                lo = self.margin - (k - 1 - j) * d
                rows[..., j * r:(j + 1) * r].copy_(padded[:, lo:lo + length])
            torch.matmul(rows, w_in, out=pre).sigmoid_()
            s_a, s_b = pre.chunk(2, dim=-1)
            s_a.mul_(s_b)
            torch.matmul(pre, w_out, out=out)
            out32.copy_(out).add_(b_out)
            if has_residual:
                h.add_(out32[..., :r]).mul_(math.sqrt(0.5))
            skips.add_(out32[..., r:])
        y = torch.relu(skips.mul_(math.sqrt(1.0 / len(self.layers))))
        y = torch.relu(y @ self.head[0][0] + self.head[0][1]) @ self.head[1][0] + self.head[1][1]
        return y.transpose(1, 2)
