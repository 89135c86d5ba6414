"""The mel-consistency steps on real and TTS-like (blurred) mels: PESQ-wb, STOI, MR-STFT and the rest against the
recording, for the raw student, refinement settings and Griffin-Lim, on the same mels (medians over files, seed 0).

    python scripts/refine_check.py corpora/asterisk/heldout.txt --every 7 --variants 0 8:0 8:1
    (STEPS:SMOOTHING; a mel blurred in time by 1 frame and across bands by 0.7 band stands in for a TTS model's)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from wavegen import Vocoder
from wavegen.audio import load_audio
from wavegen.evaluate import reference_files, resynthesis_metrics

BLURS = {"real": (0.0, 0.0), "time": (1.0, 0.0), "bands": (0.0, 0.7), "both": (1.0, 0.7)}  # Gaussian widths


def blur(mel: torch.Tensor, frames: float, bands: float) -> torch.Tensor:
    """(B, n_mels, F) log-mel smoothed by Gaussians of `frames` over time and `bands` across bands (edges held)."""
    for dim, width in ((2, frames), (1, bands)):
        if width == 0:
            continue
        reach = int(3 * width) + 1
        kernel = torch.exp(-0.5 * (torch.arange(-reach, reach + 1) / width) ** 2)
        moved = mel.transpose(dim, -1)
        shape = moved.shape
        padded = torch.nn.functional.pad(moved.reshape(-1, 1, shape[-1]), (reach, reach), mode="replicate")
        mel = torch.nn.functional.conv1d(padded, (kernel / kernel.sum()).view(1, 1, -1)).reshape(shape).transpose(dim, -1)
    return mel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="audio files: a folder or a list such as a corpus's heldout.txt")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--every", type=int, default=1, help="take every n-th file")
    parser.add_argument("--variants", nargs="+", default=["0", "8:0", "8:1"], help="STEPS[:SMOOTHING] each")
    parser.add_argument("--blurs", nargs="+", default=list(BLURS), choices=list(BLURS))
    args = parser.parse_args()
    vocoder = Vocoder.load(args.checkpoint, precision="fp32")
    hop = vocoder.audio.hop_length
    variants = {v: dict(zip(("refine_steps", "refine_smoothing"), (int(v.split(":")[0]), *map(float, v.split(":")[1:]))))
                for v in args.variants}
    rows: dict[str, list[dict[str, float]]] = {}
    for path in reference_files(args.reference)[:: args.every]:
        wav = load_audio(path, vocoder.audio.sample_rate)
        wav = wav[: wav.size // hop * hop]
        real = vocoder.mel(wav)
        for name in args.blurs:
            mel = blur(real, *BLURS[name])
            for variant, options in variants.items():
                out = vocoder.synthesize(mel, "student", seed=0, **options)[0].numpy()
                rows.setdefault(f"{name} / student {variant}", []).append(resynthesis_metrics(wav, out, vocoder.audio))
            out = vocoder.synthesize(mel, "griffin-lim")[0].numpy()
            rows.setdefault(f"{name} / griffin-lim", []).append(resynthesis_metrics(wav, out, vocoder.audio))
    report = {key: {m: float(np.nanmedian([r[m] for r in values])) for m in values[0]} for key, values in rows.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
