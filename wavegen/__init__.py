"""wavegen: a neural vocoder. A WaveNet teacher, distilled into a parallel Gaussian IAF student."""

from wavegen.config import AudioConfig, FlowConfig, Preset, WaveNetConfig, load_preset
from wavegen.vocoder import Vocoder

__all__ = ["AudioConfig", "FlowConfig", "Preset", "Vocoder", "WaveNetConfig", "load_preset"]
__version__ = "0.1.0"
