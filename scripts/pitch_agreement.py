"""The pitch predictor against the F0 labels on every held-out utterance of a preprocessed corpus, as it
is and scaled in pitch (the audio resampled so every frequency moves by the factor, the labels scaled):
voicing error, median |error| in cents and gross errors (> 50 cents) on frames voiced in both.

    python scripts/pitch_agreement.py data/asterisk16k --checkpoint runs/pitch/pitch.safetensors

`--consensus`: also score only the frames where the labels (DIO) and a second tracker (Harvest, run here on each
file, about 100 s for the 143 held-out files) agree: both unvoiced, or both voiced within 50 cents. Where two
trackers disagree the label is itself uncertain; the figures there say how much of the error is the predictor's.
"""

from __future__ import annotations

import argparse
import json

import torch

from wavegen.audio import MelFrontend, pitch_labels
from wavegen.checkpoint import import_model
from wavegen.data import SegmentDataset
from wavegen.models.pitch import VOICED_THRESHOLD, pitch_agreement
from wavegen.stages import scale_pitch

RATIOS = {"1.0": (1, 1), "0.7": (7, 10), "1.4": (7, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--checkpoint", default="checkpoints/default/pitch.safetensors")
    parser.add_argument("--consensus", action="store_true", help="also score the frames DIO and Harvest agree on")
    args = parser.parse_args()
    model, preset = import_model(args.checkpoint, "pitch")
    frontend = MelFrontend(preset.audio)
    data = SegmentDataset(args.data, preset.audio, "valid", 1, pitch=True)
    second = {}  # item index -> Harvest's F0 (F,), computed once
    report = {}
    for name, ratio in RATIOS.items():
        predicted, voiced, labels, others = [], [], [], []
        for i, item in enumerate(data.items):
            wav, mel, f0 = data.crop(i, 0, item["frames"])
            if args.consensus and i not in second:
                second[i] = torch.from_numpy(pitch_labels(wav.numpy(), preset.audio, "harvest")[: f0.shape[-1]])
            other = scale_pitch(wav[None], second[i][None], ratio, preset.audio.hop_length)[1] if second else None
            wav, f0 = scale_pitch(wav[None], f0[None], ratio, preset.audio.hop_length)
            with torch.no_grad():
                hz, voicing = model.predict(frontend(wav) if ratio[0] != ratio[1] else mel[None])
            predicted.append(hz[0])
            voiced.append(voicing[0] > VOICED_THRESHOLD)
            labels.append(f0[0, : hz.shape[-1]])
            if other is not None:
                others.append(other[0, : hz.shape[-1]])
        hz, is_voiced, f0 = torch.cat(predicted), torch.cat(voiced), torch.cat(labels)
        report[name] = {**pitch_agreement(hz, is_voiced, f0), "files": len(data.items)}
        if others:
            keep = trackers_agree(f0, torch.cat(others))
            report[name]["consensus"] = {**pitch_agreement(hz[keep], is_voiced[keep], f0[keep]),
                                         "frames": float(keep.float().mean())}
    print(json.dumps(report, indent=1))


def trackers_agree(f0: torch.Tensor, other: torch.Tensor, cents: float = 50.0) -> torch.Tensor:
    """Two trackers' F0 (F,) in Hz, 0 unvoiced -> (F,) bool: both unvoiced, or both voiced within `cents`."""
    both = (f0 > 0) & (other > 0)
    apart = (1200.0 * torch.log2(f0.clamp(min=1e-3) / other.clamp(min=1e-3))).abs()
    return ((f0 > 0) == (other > 0)) & (~both | (apart <= cents))


if __name__ == "__main__":
    main()
