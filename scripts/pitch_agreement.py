"""The pitch predictor against the F0 labels on every held-out utterance of a preprocessed corpus, as it
is and scaled in pitch (the audio resampled so every frequency moves by the factor, the labels scaled):
voicing error, median |error| in cents and gross errors (> 50 cents) on frames voiced in both.

    python scripts/pitch_agreement.py data/asterisk16k --checkpoint runs/pitch/pitch.safetensors
"""

from __future__ import annotations

import argparse
import json

import torch

from wavegen.audio import MelFrontend
from wavegen.checkpoint import import_model
from wavegen.data import SegmentDataset
from wavegen.models.pitch import VOICED_THRESHOLD, pitch_agreement
from wavegen.stages import scale_pitch

RATIOS = {"1.0": (1, 1), "0.7": (7, 10), "1.4": (7, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--checkpoint", default="checkpoints/default/pitch.safetensors")
    args = parser.parse_args()
    model, preset = import_model(args.checkpoint, "pitch")
    frontend = MelFrontend(preset.audio)
    data = SegmentDataset(args.data, preset.audio, "valid", 1, pitch=True)
    report = {}
    for name, ratio in RATIOS.items():
        predicted, voiced, labels = [], [], []
        for i, item in enumerate(data.items):
            wav, mel, f0 = data.crop(i, 0, item["frames"])
            wav, f0 = scale_pitch(wav[None], f0[None], ratio, preset.audio.hop_length)
            with torch.no_grad():
                hz, voicing = model.predict(frontend(wav) if ratio[0] != ratio[1] else mel[None])
            predicted.append(hz[0])
            voiced.append(voicing[0] > VOICED_THRESHOLD)
            labels.append(f0[0, : hz.shape[-1]])
        report[name] = pitch_agreement(torch.cat(predicted), torch.cat(voiced), torch.cat(labels))
        report[name]["files"] = len(data.items)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
