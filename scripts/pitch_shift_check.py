"""Does a shifted resynthesis measure as shifted? On held-out files: the output's F0 (the labeller, WORLD DIO)
over the original's on frames voiced in both, median per file, then the median over files; and the voicing
agreement (fraction of frames both call voiced, or both unvoiced).

    python scripts/pitch_shift_check.py corpora/asterisk/heldout.txt --every 7 --factors 0.8 1.25 1.5
    python scripts/pitch_shift_check.py corpora/asterisk/heldout.txt --every 7 --model teacher   # sequential
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from wavegen import Vocoder
from wavegen.audio import load_audio, pitch_labels
from wavegen.evaluate import reference_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="audio files: a folder or a list such as a corpus's heldout.txt")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--every", type=int, default=1, help="take every n-th file")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 1.0, 1.25, 1.5])
    parser.add_argument("--model", default="student", choices=["student", "teacher"])
    args = parser.parse_args()
    vocoder = Vocoder.load(args.checkpoint, precision="fp32")
    audio = vocoder.audio
    files = reference_files(args.reference)[:: args.every]
    ratios: dict[float, list[float]] = {f: [] for f in args.factors}
    agreement: dict[float, list[float]] = {f: [] for f in args.factors}
    for path in files:
        wav = load_audio(path, audio.sample_rate)
        wav = wav[: wav.size // audio.hop_length * audio.hop_length]
        mel = vocoder.mel(wav)
        ref = pitch_labels(wav, audio)
        for factor in args.factors:
            out = pitch_labels(vocoder.synthesize(mel, args.model, seed=0, pitch_shift=factor)[0].numpy(), audio)
            both = (ref > 0) & (out > 0)
            agreement[factor].append(float(np.mean((ref > 0) == (out > 0))))
            if both.sum() >= 5:
                ratios[factor].append(float(np.median(out[both] / ref[both])))
    medians = {f: float(np.median(ratios[f])) if ratios[f] else float("nan") for f in args.factors}  # nan: no
    # file had 5 frames voiced in both (a whispering model)
    report = {str(f): {"median_ratio": medians[f], "error_percent": 100 * abs(medians[f] / f - 1),
                       "voicing_agreement": float(np.median(agreement[f])), "files": len(ratios[f])}
              for f in args.factors}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
