"""A HiFi-GAN V3-sized generator, for speed comparisons only (random weights: it makes noise, not speech).

The architecture as the HiFi-GAN paper (Kong et al., 2020) gives its V3 configuration: a kernel-7 convolution
from the mel to 256 channels; three upsampling stages by transposed convolutions with strides 8, 8, 4 (kernel
twice the stride), each halving the channels; after each, a multi-receptive-field fusion: the mean of three
residual blocks with kernels 3, 5, 7 and dilations (1, 2), (2, 6), (3, 12), each layer leaky ReLU (0.1) then
a dilated convolution, added back; then a leaky ReLU, a kernel-7 convolution to one channel and tanh. Weight
norm is left out: inference removes it. With another hop length the last stride changes so the strides still
multiply to it (the benchmark times the architecture on the same mel as the vocoder's own paths).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

V3_STRIDES = (8, 8, 4)
V3_CHANNELS = 256
V3_KERNELS = (3, 5, 7)
V3_DILATIONS = ((1, 2), (2, 6), (3, 12))
LEAKY_SLOPE = 0.1


class ResBlock(nn.Module):
    """x (B, C, T) -> x + conv_d(leaky(x)) for each dilation d in turn."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                   for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LEAKY_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """mel (B, n_mels, F) -> waveform (B, F * hop) in [-1, 1]."""

    def __init__(self, n_mels: int, hop_length: int):
        super().__init__()
        last, rest = divmod(hop_length, V3_STRIDES[0] * V3_STRIDES[1])
        if rest or last < 1:
            raise ValueError(f"a V3-sized generator upsamples by 8 x 8 x s: hop {hop_length} is not a multiple of 64")
        strides = (*V3_STRIDES[:2], last)
        self.hop = hop_length
        self.pre = nn.Conv1d(n_mels, V3_CHANNELS, 7, padding=3)
        self.ups = nn.ModuleList()
        self.fusions = nn.ModuleList()
        channels = V3_CHANNELS
        for stride in strides:
            kernel = 2 * stride
            self.ups.append(nn.ConvTranspose1d(channels, channels // 2, kernel, stride, padding=(kernel - stride) // 2))
            channels //= 2
            self.fusions.append(nn.ModuleList(ResBlock(channels, k, d) for k, d in zip(V3_KERNELS, V3_DILATIONS)))
        self.post = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.pre(mel)
        for up, blocks in zip(self.ups, self.fusions):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))
            x = sum(block(x) for block in blocks) / len(blocks)
        return self.post(F.leaky_relu(x))[:, 0, : mel.shape[-1] * self.hop].tanh()
