"""Building blocks: the causal WaveNet body with its step cache, and the mel upsampler."""

from wavegen.nn.wavenet import (Cache, CausalConv1d, CausalWaveNet, MelUpsampler, ResidualBlock, full_precision,
                                shift_right)

__all__ = ["Cache", "CausalConv1d", "CausalWaveNet", "MelUpsampler", "ResidualBlock", "full_precision",
           "shift_right"]
