"""The body's parallel pass for inference, as large GEMMs in bfloat16 (or float32).

`CausalWaveNet.forward` is the reference (channel-major conv1d in float32, what training runs). On
CPUs with bf16 matrix units, a bf16 `conv1d` is not faster, while a bf16 matmul is several times
faster than float32 (measured on this machine: ~800 vs ~200 GFLOP/s at the student's sizes). So here
each layer is one GEMM over time-major rows [x_(t-(k-1)d), ..., x_(t-d), x_t] (B, T, k R) against the
stacked conv taps, added to the layer's conditioning term, then one GEMM for the residual and skip 1x1s.
Only the GEMM operands are bf16: the residual stream, the skip sum and the head run in float32. Tests
bound the difference from the reference. `stream` continues a sequence from the reference's cache
format, so a long input runs chunk by chunk with nothing recomputed.

The conditioning term c_t W_l + b_l of layer l: given per sample (B, n_mels, T), it is one more GEMM per
sample. Given as `Knots` (the interpolating upsampler's features at frame rate, `MelUpsampler.knots`), it
is computed per frame and interpolated to the samples, exactly (a linear map commutes with linear
interpolation): hop times fewer rows through the conditioning weights, which were 80 of the first GEMM's
176 inputs per sample.

The GEMMs are most of the work, so every elementwise pass that can be folded away is:

* tanh(a) = 2 sigmoid(2a) - 1, so one sigmoid covers all 2G gate channels, and tanh(a) sigmoid(b) =
  2 s_a s_b - s_b, so the output GEMM takes [s_a s_b, s_b] against [2 W; -W];
* the taps' GEMM accumulates onto the conditioning term (beta = 1), and in float32 the output GEMM onto
  the residual stream and skip sum;
* the residual scale: with g_l = h_l / sqrt(1/2)^l the update h_(l+1) = (h_l + res_l) sqrt(1/2) becomes
  g_(l+1) = g_l + res_l / sqrt(1/2)^l, so sqrt(1/2)^l goes into layer l's tap weights and its inverse
  into its residual weights; the skip scale goes into the head;
* the output biases: the rows hold g - B_l, where B_l sums the residual biases of the layers before
  l, so W B_l joins layer l's conv bias (and the causal padding is -B_l instead of 0); the skip
  biases start the skip sum;
* g and the skip sum sit side by side in one float32 buffer, so one add takes a layer's whole output;
* the k taps are one conversion of g into the newest tap's columns and k - 1 shifted copies of it;
* optionally the upsampler's last 1x1 conv (`pack(..., projection)`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from wavegen.nn.source import Knots
from wavegen.nn.wavenet import Cache, CausalWaveNet, check_source

Conditioning = Tensor | Knots  # per sample (B, n_mels, T), or knots at frame rate (B, n_mels, T / hop + 1)


class Workspace:
    """The buffers of a packed pass, reused across layers, calls and the bodies that share it (fresh
    multi-MB tensors each op cost page faults that outweighed the GEMMs), updated in place.

    Per-sample conditioning is the same for every layer and every body of a student: it is copied into
    time-major rows once per conditioning tensor, recognised by identity (`Student.transform` hands the
    same tensor to every flow; inference tensors carry no version counter, so a caller must not modify a
    conditioning tensor in place between calls).
    """

    def __init__(self) -> None:
        self.storage: dict[str, Tensor] = {}  # flat, grown to the largest call; views per call
        self.shape: tuple | None = None
        self.buffers: dict[str, Tensor] = {}
        self.cond: Tensor | None = None  # the conditioning in the rows (held, so its identity stays unique)

    def get(self, body: PackedBody, batch: int, length: int, n_cond: int) -> dict[str, Tensor]:
        """Contiguous (B, T, columns) views for this call (`n_cond` per-sample conditioning columns, 0 for
        knots); memory is reallocated only to grow (the vocoder's chunks differ in length: the first and
        last are shorter)."""
        k, r, outs = body.kernel_size, body.residual, body.layers[0].w_out.shape[1]
        shapes = {"rows": (length, k * r, body.dtype), "pre": (length, body.gates, body.dtype),
                  "state": (length, outs, torch.float32),  # [g - B, skip sum]
                  "history": (body.margin, r, body.dtype)}  # a layer's inputs before this call
        if body.dtype != torch.float32:  # the output GEMM's result before it joins the float32 state
            shapes["out"] = (length, outs, body.dtype)
        if n_cond:
            shapes["cond"] = (length, n_cond, body.dtype)
        shape = (batch, tuple(shapes.items()))
        if shape != self.shape:
            self.shape, self.cond = shape, None
            for name, (steps, width, dtype) in shapes.items():
                size = batch * steps * width
                if name not in self.storage or self.storage[name].numel() < size or self.storage[name].dtype != dtype:
                    self.storage[name] = torch.empty(size, dtype=dtype)
                self.buffers[name] = self.storage[name][:size].view(batch, steps, width)
        return self.buffers

    def put_conditioning(self, cond: Tensor) -> Tensor:
        """cond (B, n_mels, T) as time-major rows (B, T, n_mels), copied unless they already hold it."""
        if cond is not self.cond:
            self.buffers["cond"].copy_(cond.transpose(1, 2))
            self.cond = cond
        return self.buffers["cond"]


def pack(bodies: Sequence[CausalWaveNet], dtype: torch.dtype = torch.bfloat16,
         projection: tuple[Tensor, Tensor] | None = None) -> list[PackedBody]:
    """Packed copies of bodies run one after another (a student's flows), sharing one workspace.

    `projection` (P (n_in, n_mels), p (n_mels,)): the bodies take conditioning u and fold c = u P + p
    into their weights (`MelUpsampler.features` / `.knots` and `.projection`: one 1x1 conv less).
    """
    workspace = Workspace()
    return [PackedBody(body, dtype, workspace, projection=projection) for body in bodies]


class PackedLayer(NamedTuple):
    """One residual block in GEMM layout (see the module docstring for the folded scales and biases)."""

    w_taps: Tensor  # (k R, 2G), dtype
    w_cond: Tensor  # (n_mels, 2G), float32: applied per frame (knots) or, as `w_cond_rows`, per sample
    w_cond_rows: Tensor  # (n_mels, 2G), dtype
    bias: Tensor  # (2G,), float32
    w_out: Tensor  # (2G, R + S), dtype
    carried: Tensor  # (R,) B_l: the residual biases of the layers before, in g units
    padding: Tensor  # (R,) dtype: -B_l, h = 0 before t = 0
    scale: float  # sqrt(1/2)^l


class PackedBody:
    """A frozen copy of one body's weights in GEMM layout; call it like the body (inference only), with
    per-sample conditioning or `Knots`.

    Its intermediates live in a `Workspace`, which bodies of one width can share (`pack`). With a
    `projection` (P, p) it takes conditioning u instead of c = u P + p (see `pack`).
    """

    def __init__(self, body: CausalWaveNet, dtype: torch.dtype = torch.bfloat16, workspace: Workspace | None = None,
                 projection: tuple[Tensor, Tensor] | None = None):
        cfg = body.cfg
        k, g, r = cfg.kernel_size, cfg.gate_channels, cfg.residual_channels
        self.dtype, self.dilations, self.kernel_size, self.residual, self.gates = dtype, cfg.dilations, k, r, 2 * g
        self.margin = (k - 1) * max(cfg.dilations)  # the longest history a layer reads
        tanh_half = torch.cat([torch.full((g,), 2.0), torch.ones(g)])  # tanh(a) = 2 sigmoid(2a) - 1
        half = math.sqrt(0.5)
        carried = torch.zeros(r)  # B_m: the residual biases of layers < m, in g units
        skip_bias = torch.zeros(cfg.skip_channels)
        self.layers: list[PackedLayer] = []
        for i, block in enumerate(body.blocks):
            taps, cond, conv_b, out_w, out_b = block.gemm_weights()
            if projection is not None:  # the conditioning arrives as u with c = u P + p: c W = u (P W) + p W
                cond, conv_b = projection[0] @ cond, conv_b + projection[1] @ cond
            taps = taps * half**i  # against g_i = h_i / sqrt(1/2)^i
            conv_b = conv_b + carried.repeat(k) @ taps  # the rows hold g - B_i
            w_out = torch.cat([2.0 * out_w, -out_w])  # (2G, R + S) against [s_a s_b, s_b]
            w_out[:, :r] /= half**i
            self.layers.append(PackedLayer((taps * tanh_half).to(dtype), cond * tanh_half,
                                           (cond * tanh_half).to(dtype), conv_b * tanh_half, w_out.to(dtype),
                                           carried, (-carried).to(dtype), half**i))
            carried = carried + out_b[:r] / half**i
            skip_bias += out_b[r:]
        self.input_w = body.input.weight[:, 0, 0].detach().float().clone()
        self.input_b = body.input.bias.detach().float().clone()
        # a source input (S channels) joins h_0 through its own 1x1: (S, R)
        self.source_w = None if body.source is None else body.source.weight[:, :, 0].detach().float().T.clone()
        self.skip_bias = skip_bias  # every layer's skip bias, summed: where the skip sum starts
        (h1_w, h1_b), (h2_w, h2_b) = body.head_weights()
        self.head = [(h1_w * math.sqrt(1.0 / len(body.blocks)), h1_b), (h2_w, h2_b)]  # relu(a x) = a relu(x)
        self.workspace = workspace or Workspace()

    @torch.inference_mode()
    def __call__(self, x: Tensor, cond: Conditioning, source: Tensor | None = None) -> Tensor:
        """x (B, 1, T), cond (B, n_mels, T) or `Knots` of T samples, source (B, S, T) if the body takes one ->
        (B, C_out, T) float32, as `CausalWaveNet.forward`."""
        return self._run(x, cond, None, source)[0]

    @torch.inference_mode()
    def stream(self, x: Tensor, cond: Conditioning, cache: Cache, source: Tensor | None = None
               ) -> tuple[Tensor, Cache]:
        """As `CausalWaveNet.stream`, with its cache format (each layer's last (k - 1) d inputs h, float32)."""
        return self._run(x, cond, cache, source)

    def _conditioning(self, layer: PackedLayer, cond: Conditioning, rows: Tensor | None, pre: Tensor) -> None:
        """pre (B, T, 2G) = the layer's conditioning term c_t W + b: per frame and interpolated for knots,
        else one GEMM over the per-sample rows (B, T, n_mels)."""
        if isinstance(cond, Knots):
            batch, frames = cond.values.shape[0], cond.values.shape[-1] - 1
            knots = torch.addmm(layer.bias, cond.values.transpose(1, 2).reshape(-1, cond.values.shape[1]),
                                layer.w_cond).view(batch, frames + 1, 1, -1)  # (B, F + 1, 1, 2G)
            left = knots[:, :-1]
            torch.addcmul(left, knots[:, 1:] - left, cond.ramp().view(-1, 1), out=pre.view(batch, frames, cond.hop, -1))
        else:
            torch.matmul(rows, layer.w_cond_rows, out=pre).add_(layer.bias)

    def _run(self, x: Tensor, cond: Conditioning, cache: Cache | None, source: Tensor | None = None
             ) -> tuple[Tensor, Cache | None]:
        check_source(self.source_w is not None, source)
        (batch, _, length), k, r, g = x.shape, self.kernel_size, self.residual, self.gates // 2
        knots = isinstance(cond, Knots)
        if knots and cond.length != length:
            raise ValueError(f"knots for {cond.length} samples given with {length} samples")
        space = self.workspace.get(self, batch, length, 0 if knots else cond.shape[1])
        rows, pre, state = space["rows"], space["pre"], space["state"]
        cond_rows = None if knots else self.workspace.put_conditioning(cond)  # shared by every layer
        torch.mul(x.transpose(1, 2), self.input_w, out=state[..., :r]).add_(self.input_b)  # g_0 = h_0
        if source is not None:
            state[..., :r].add_(source.transpose(1, 2).float() @ self.source_w)
        state[..., r:] = self.skip_bias
        newest = rows[..., (k - 1) * r:]
        new_cache = None if cache is None else []
        for i, (layer, d) in enumerate(zip(self.layers, self.dilations)):
            context = (k - 1) * d
            if cache is None:
                history = layer.padding.expand(batch, context, r)
            else:  # the true inputs h in the cache, as g - B_i; the new cache from this call's tail
                history = space["history"][:, :context]
                history.copy_(cache[i].transpose(1, 2) / layer.scale - layer.carried)
                tail = min(length, context)
                recent = ((state[:, length - tail:, :r] + layer.carried) * layer.scale).transpose(1, 2)  # (B, R, tail)
                new_cache.append(torch.cat([cache[i][..., tail:], recent], dim=-1))
            newest.copy_(state[..., :r])
            for j in range(k - 1):  # tap j sees x_(t - (k - 1 - j) d): the history, then the newest tap shifted
                shift, tap = (k - 1 - j) * d, rows[..., j * r:(j + 1) * r]
                before = min(length, shift)
                tap[:, :before].copy_(history[:, context - shift:context - shift + before])
                tap[:, before:].copy_(newest[:, :length - before])
            self._conditioning(layer, cond, cond_rows, pre)
            pre.view(-1, self.gates).addmm_(rows.view(-1, k * r), layer.w_taps).sigmoid_()
            pre[..., :g].mul_(pre[..., g:])
            if self.dtype == torch.float32:  # onto the residual stream and the skip sum
                state.view(-1, state.shape[-1]).addmm_(pre.view(-1, self.gates), layer.w_out)
            else:
                state.add_(torch.matmul(pre, layer.w_out, out=space["out"]))
        y = state[..., r:].relu_()
        y = torch.relu(y @ self.head[0][0] + self.head[0][1]) @ self.head[1][0] + self.head[1][1]
        return y.transpose(1, 2), new_cache
