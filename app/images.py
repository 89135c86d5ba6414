"""Log-mel spectrograms as RGB images (numpy + PIL; no matplotlib).

Low frequencies at the bottom, time to the right, a magma-like colour map. Both images of one run
share a colour scale, so the input and output mels can be compared by eye.
"""

from __future__ import annotations

import librosa
import numpy as np
from PIL import Image, ImageDraw

from wavegen.config import AudioConfig

IMAGE_SIZE = (640, 240)  # (width, height) in pixels
CONTOUR_COLOUR = (0, 230, 255)  # cyan: stands out on the magma map
DYNAMIC_RANGE = 10.0  # nats below the loudest bin that still get a colour (about 87 dB)
_MAGMA_ANCHORS = np.array([  # (9, 3): evenly spaced samples of matplotlib's "magma"
    (0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
    (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=np.float64)


def _palette() -> np.ndarray:
    """(256, 3) uint8 colour map, linearly interpolated between the anchors."""
    positions = np.linspace(0.0, 1.0, len(_MAGMA_ANCHORS))
    levels = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(levels, positions, _MAGMA_ANCHORS[:, c]) for c in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8)


PALETTE = _palette()


def colour_scale(*mels: np.ndarray) -> tuple[float, float]:
    """(low, high) shared by several log-mels: the loudest bin and DYNAMIC_RANGE below it."""
    high = max(float(np.max(m)) for m in mels)
    return high - DYNAMIC_RANGE, high


def mel_image(mel: np.ndarray, scale: tuple[float, float], size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """(n_mels, F) log-mel -> (height, width, 3) uint8 image."""
    low, high = scale
    level = np.clip((np.asarray(mel, dtype=np.float64) - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgb = PALETTE[(level[::-1] * 255).round().astype(np.uint8)]  # (n_mels, F, 3), low bands at the bottom
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def band_position(hz: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """Frequencies in Hz -> fractional mel band index (band m is centred at the (m + 1)-th of n_mels + 2
    points evenly spaced on the slaney mel scale between f_min and f_max, as the filterbank's are)."""
    low, high = librosa.hz_to_mel([audio.f_min, audio.f_max], htk=False)
    return (librosa.hz_to_mel(hz, htk=False) - low) / (high - low) * (audio.n_mels + 1) - 1.0


def draw_contour(image: np.ndarray, f0: np.ndarray, audio: AudioConfig, width: int = 3) -> np.ndarray:
    """A mel image (H, W, 3) from `mel_image` and F0 (F,) in Hz (0 unvoiced) -> a copy with the contour
    drawn where it lies in the mel's bands, one line per voiced run, on the image's time axis."""
    height, image_width = image.shape[:2]
    frames = f0.shape[-1]
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    rows = height - 1 - (band_position(np.maximum(f0, audio.f_min + 1e-3), audio) + 0.5) * height / audio.n_mels
    columns = (np.arange(frames) + 0.5) * image_width / frames
    voiced = f0 > 0
    start = None
    for i in range(frames + 1):  # per voiced run
        if i < frames and voiced[i]:
            start = i if start is None else start
            continue
        if start is not None:
            points = list(zip(columns[start:i].tolist(), rows[start:i].tolist()))
            if len(points) == 1:
                points = points * 2
            draw.line(points, fill=CONTOUR_COLOUR, width=width)
            start = None
    return np.asarray(picture)
