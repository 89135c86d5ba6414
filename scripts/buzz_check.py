"""Buzz, measured: how periodic each model's output is above 4 kHz in voiced frames, beside the recordings'.

    python scripts/buzz_check.py corpora/asterisk/heldout_every3.txt --files 48 \\
        default:0 default:8 griffin-lim runs/other_checkpoint:8

Real speech is mostly aperiodic above 3-4 kHz; a vocoder that draws harmonics up to 8 kHz there buzzes, which
PESQ, STOI and spectral distances barely see. Per frame that the pitch predictor calls voiced on the recording
(voicing > 0.5), `wavegen.evaluate.high_band_periodicity` (the 4-8 kHz band's largest normalised correlation over
0.8-1.25 pitch periods, 40 ms windows: about 0.15 for noise, 0.7-1 for a harmonic band; `wavegen eval` reports the
per-file difference to the recording as "buzz"). Printed per model: the median and mean over all frames of all
files, and the share of frames above 0.5. Models: CHECKPOINT:STEPS (the student with that many
mel-consistency steps) or griffin-lim; "original" is the recording.
"""

from __future__ import annotations

import argparse

import numpy as np

from wavegen.audio import load_audio
from wavegen.evaluate import high_band_periodicity
from wavegen.files import discover
from wavegen.vocoder import Vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="wav files, a folder or a list")
    parser.add_argument("models", nargs="+", help="CHECKPOINT:STEPS or griffin-lim")
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--reference", default="default", help="the checkpoint whose predictor marks voiced frames")
    args = parser.parse_args()
    reference = Vocoder.load(args.reference, device="cpu", precision="fp32")
    rate, hop = reference.audio.sample_rate, reference.audio.hop_length
    vocoders: dict[str, Vocoder] = {}
    found: dict[str, list[float]] = {name: [] for name in ["original", *args.models]}
    for _, path in discover(args.audio)[:args.files]:
        wav = load_audio(path, rate)
        mel = reference.mel(wav)
        f0, voicing = (t[0].numpy() for t in reference.pitch(mel))
        f0 = np.where(voicing > 0.5, f0, 0.0)
        found["original"] += list(high_band_periodicity(np.asarray(wav)[:mel.shape[-1] * hop], f0, reference.audio))
        for name in args.models:
            if name == "griffin-lim":
                out = reference.synthesize(mel, "griffin-lim")
            else:
                checkpoint, _, steps = name.rpartition(":")
                vocoder = vocoders.setdefault(checkpoint, Vocoder.load(checkpoint, device="cpu", precision="fp32"))
                out = vocoder.synthesize(mel, "student", seed=0, refine_steps=int(steps))
            found[name] += list(high_band_periodicity(out[0].numpy(), f0, reference.audio))
    for name, values in found.items():
        values = np.array(values)
        print(f"{name:<40} median {np.median(values):.3f}  mean {values.mean():.3f}  share above 0.5 "
              f"{(values > 0.5).mean():.3f}  ({len(values)} frames)")


if __name__ == "__main__":
    main()
