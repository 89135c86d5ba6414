"""Linear-frequency spectrograms (0 to --max-hz, where harmonics show) of reference files beside their
resyntheses, one row per file and one column per version, each row on one colour scale.

    python scripts/spectrogram_sheet.py OUT.png ref.wav:student.wav:griffin-lim.wav [...] --max-hz 2000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from app.images import colour_scale, mel_image
from wavegen.audio import load_audio

RATE, N_FFT, HOP = 16000, 1024, 128


def log_spectrogram(path: str, max_hz: float) -> np.ndarray:
    """(bins up to max_hz, frames) natural-log STFT magnitude of a 16 kHz file."""
    wav = torch.from_numpy(load_audio(path, RATE))
    spec = torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs()
    return torch.log(spec[: int(max_hz * N_FFT / RATE) + 1].clamp(min=1e-5)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("rows", nargs="+", help="colon-separated wav paths, the reference first")
    parser.add_argument("--max-hz", type=float, default=2000.0)
    parser.add_argument("--labels", default="original,student,griffin-lim")
    args = parser.parse_args()
    size = (420, 260)
    rows = []
    for row in args.rows:
        specs = [log_spectrogram(p, args.max_hz) for p in row.split(":")]
        scale = colour_scale(*specs)
        rows.append(np.concatenate([mel_image(s, (scale[1] - 8.0, scale[1]), size) for s in specs], axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(args.labels.split(",")):
        draw.text((i * size[0] + 6, 4), f"{label}, 0-{args.max_hz:.0f} Hz", fill=(255, 255, 255))
    sheet.save(args.output)


if __name__ == "__main__":
    main()
