"""Held-out NLL of teachers: nats and bits per sample over all samples, and over voiced and unvoiced frames.

    python scripts/teacher_nll.py data/asterisk16k checkpoints/default/teacher.safetensors runs/x/teacher.safetensors

Every held-out utterance of a preprocessed cache (its `valid` split), each teacher scoring the whole file in one
parallel pass; a pitch-driven teacher reads the cache's F0 labels (voiced where F0 > 0), as in training. Frames are
split by those labels. Figures are totals over all files divided by their sample counts.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from wavegen.checkpoint import import_model
from wavegen.data import load_manifest


def score(teacher, root: Path, items: list[dict], hop: int) -> dict[str, float]:
    totals = {"all": [0.0, 0], "voiced": [0.0, 0], "unvoiced": [0.0, 0]}
    for item in items:
        wav = torch.from_numpy(np.load(root / "audio" / f"{item['id']}.npy"))[None]  # (1, T)
        mel = torch.from_numpy(np.load(root / "mel" / f"{item['id']}.npy"))[None]  # (1, n_mels, F)
        f0 = torch.from_numpy(np.load(root / "f0" / f"{item['id']}.npy"))[None].float()  # (1, F)
        pitch = {"f0": f0, "voicing": (f0 > 0).float()} if teacher.pitch_driven else {}
        with torch.inference_mode():
            log_p = teacher.log_prob(wav, mel, **pitch)[0]  # (T,)
        voiced = (f0[0] > 0).repeat_interleave(hop)[: log_p.shape[-1]]
        for name, mask in (("all", torch.ones_like(voiced)), ("voiced", voiced), ("unvoiced", ~voiced)):
            totals[name][0] -= float(log_p[mask].sum())
            totals[name][1] += int(mask.sum())
    return {name: total / max(count, 1) for name, (total, count) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder written by `wavegen preprocess` (with F0 labels)")
    parser.add_argument("teachers", nargs="+", type=Path, help="teacher.safetensors files")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out files")
    args = parser.parse_args()
    items = [u for u in load_manifest(args.data)["utterances"] if u["split"] == "valid"][: args.limit]
    print(f"{len(items)} held-out files; NLL in nats per sample (bits in brackets): all / voiced / unvoiced")
    for path in args.teachers:
        teacher, preset = import_model(path, "teacher")
        nll = score(teacher, args.data, items, preset.audio.hop_length)
        print(f"{path}: " + " / ".join(f"{nll[k]:.4f} ({nll[k] / math.log(2):.3f})"
                                       for k in ("all", "voiced", "unvoiced")))


if __name__ == "__main__":
    main()
